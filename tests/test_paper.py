"""One transcription of the paper's tables (`vggnet.paper`): every grid's paper column and every
number a doc or report quotes from the paper must be one of its numbers."""

import re
from pathlib import Path

import pytest

from vggnet import paper
from vggnet.experiments.grid import known_grids, load_grid

DOCS = Path(__file__).resolve().parents[1] / "docs"
_METRIC_KEYS = {"top1_error", "top5_error", "localisation_error", "mAP", "mean_class_accuracy"}
_TRANSFER = {"appendix_b": "VOC-2007", "appendix_b_caltech101": "Caltech-101", "appendix_b_caltech256": "Caltech-256"}


def _paper_table(grid_name: str) -> str:
    if grid_name in _TRANSFER:
        return "table11"
    return "table3" if grid_name == "b_vs_b5x5" else grid_name


def test_paper_module_is_torch_free_and_has_the_fixed_numbers():
    import subprocess
    import sys

    code = "import sys, vggnet.paper; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    assert [r["localisation_error"] for r in paper.TABLES["table9"]] == [29.5, 28.2, 27.5, 26.9]
    assert [r["test_error"] for r in paper.TABLES["table9"]] == [None, 26.7, None, 25.3]
    assert [r["mAP"] for r in paper.TABLES["table12"]] == [79.2, 84.0]
    assert paper.VOC_SCALES == (256, 384, 512, 640, 768)
    with pytest.raises(KeyError):
        paper.find("table3", net="Z")


@pytest.mark.parametrize("name", sorted(known_grids()))
def test_every_grid_paper_value_is_the_papers(name):
    grid = load_grid(name)
    table = _paper_table(name)
    assert table in paper.TABLES, f"{name}: no transcription for {table}"
    checked = 0
    for row in grid.rows:
        if not row.paper:
            continue
        if table == "table11":
            net = row.labels["net"]
            found = paper.find("table11", net=net, dataset=_TRANSFER[name])
            metric = next(m for m in row.paper if not m.endswith("_std"))
            want = {metric: found["value"], **({f"{metric}_std": found["std"]} if found["std"] is not None else {})}
            assert row.paper == want, f"{name}: row {row.cell}: {row.paper} against {want}"  # Caltech: mean ± std
            checked += 1
            continue
        candidates = [r for r in paper.TABLES[table]
                      if all(str(r[k]) == v for k, v in row.labels.items() if k in r)
                      and all(r.get(m) == v for m, v in row.paper.items())]
        assert len(candidates) == 1, f"{name}: row {row.cell} {row.labels} {row.paper} is not a row of the paper's {table}"
        checked += 1
    assert checked or name == "b_vs_b5x5", f"{name}: no row quotes the paper"


def test_the_grids_run_the_papers_protocols():
    t8 = load_grid("table8")
    assert all("384" in r.labels["S"] for r in t8.rows if r.paper)
    t9 = load_grid("table9")
    for row in t9.rows:
        cell = t9.cells[row.cell]
        assert cell.classifiers == ["D-S256-512", "E-S256-512"]
        assert cell.settings["classifier_method"] == "both" and cell.settings["classifier_scales"] == [256, 384, 512]
    b = load_grid("b_vs_b5x5")
    assert {b.cells[r.cell].settings["method"] for r in b.rows} == {"center", "dense"}
    voc = load_grid("appendix_b")
    assert all(voc.cells[r.cell].settings["test_scales"] == list(paper.VOC_SCALES) for r in voc.rows if r.paper)
    for name, protocol in (("appendix_b_caltech101", "Caltech-101"), ("appendix_b_caltech256", "Caltech-256")):
        want = paper.TRANSFER_PROTOCOLS[protocol]
        for row in load_grid(name).rows:
            extra = load_grid(name).cells[row.cell].settings["extra"]
            assert extra[extra.index("--train-per-class") + 1] == str(want["train_per_class"])
            assert extra[extra.index("--splits") + 1] == str(want["splits"])
            assert ("--test-per-class" in extra) == (want["test_per_class"] is not None)
    t12 = load_grid("table12")
    assert [t12.cells[r.cell].settings["extra"][-1] for r in t12.rows] == ["image", "image+box"]


def _doc_files():
    return sorted(DOCS.glob("*.md")) + sorted((DOCS / "reproduction").glob("*.md"))


def _paper_quotes(text: str):
    """(where, number) for each number a doc quotes from the paper: the numeric cells of a table's
    columns headed `paper...`, and the decimal numbers of a prose paragraph that names the paper
    and one of its Tables 3-12 (a paragraph that quotes the paper holds no percentage of ours)."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[i + 1]):
            header = [c.strip().lower() for c in lines[i].strip("|").split("|")]
            cols = [k for k, h in enumerate(header) if h.startswith("paper")]
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip("|").split("|")]
                for k in cols:
                    m = re.match(r"^\**(\d+\.\d+)", cells[k]) if k < len(cells) else None
                    if m:
                        yield f"line {i + 1}", float(m.group(1))
                i += 1
            continue
        i += 1
    for para in re.split(r"\n\s*\n", text):
        if para.lstrip().startswith(("|", "    ", "```")):
            continue
        if "paper" in para and re.search(r"Table (?:[3-9]|1[0-2])\b", para):
            # a percentage, or a mean before its "± std%": "29.5%", "92.7 ± 0.5%"
            for m in re.finditer(r"(?<![\w.§])(\d+\.\d+)(?=\s*(?:%|±))", para):
                yield para.strip()[:60], float(m.group(1))


@pytest.mark.parametrize("doc", _doc_files(), ids=lambda p: p.name)
def test_every_number_a_doc_quotes_from_the_paper_is_the_papers(doc):
    known = paper.numbers()
    wrong = [(where, n) for where, n in _paper_quotes(doc.read_text(encoding="utf-8")) if n not in known]
    assert not wrong, f"{doc.name}: numbers quoted from the paper that are not in vggnet.paper: {wrong}"


def test_the_quote_checker_catches_a_wrong_number():
    text = ("The paper's Table 9: 31.4% at S = 256 (§4.1), 92.7 ± 0.5%.\n\n"
            "| net | ours | paper |\n|---|---|---|\n| D | 40.0 | 26.6 |\n")
    assert [n for _, n in _paper_quotes(text)] == [26.6, 31.4, 92.7, 0.5]
    assert 31.4 not in paper.numbers() and 26.6 in paper.numbers()


def test_the_runner_passes_the_papers_settings_to_the_commands(tmp_path):
    from vggnet.experiments.runner import Overrides, plan_grid

    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "val").mkdir()
    t9 = plan_grid(load_grid("table9"), data=data, root=tmp_path / "r")
    argv = t9.cells["S384-Q352-384"].argv
    assert argv[argv.index("--classifier-method") + 1] == "both"
    assert argv[argv.index("--classifier-scales") + 1] == "256,384,512"
    assert sum(a == "--classifier" for a in argv) == 2 and argv[argv.index("--test-scales") + 1] == "352,384"
    # the fusion row: the S = 256 net at Q = 256, the S = 384 net at Q = 352, 384 (Table 9's last row)
    argv = t9.cells["fusion"].argv
    pairs = [(argv[i + 1], argv[i + 3]) for i, a in enumerate(argv) if a == "--checkpoint"]
    assert [(Path(c).parent.name, q) for c, q in pairs] == [
        (t9.cells["PCR-S256"].run_dir.name, "256"), (t9.cells["PCR-S384"].run_dir.name, "352,384")]
    assert sum(a == "--test-scales" for a in argv) == 2
    b = plan_grid(load_grid("b_vs_b5x5"), data=data, root=tmp_path / "r")
    argv = b.cells["B5x5-S256-center"].argv
    assert argv[argv.index("--method") + 1] == "center" and argv[argv.index("--test-scales") + 1] == "256"
    t12 = plan_grid(load_grid("table12"), data=data, root=tmp_path / "r",
                    overrides=Overrides(transfer_data=str(tmp_path)))
    argv = t12.cells["DE-image-box"].argv
    assert argv[argv.index("--task") + 1] == "action" and argv[argv.index("--action-setting") + 1] == "image+box"
    assert argv[argv.index("--test-scales") + 1] == "256,384,512,640,768"
    # the S = 384 localisation nets of Table 8 start from the classification D at S = 384
    t8 = plan_grid(load_grid("table8"), data=data, root=tmp_path / "r")
    assert str(t8.cells["D-S384"].run_dir) in " ".join(t8.cells["PCR-all"].argv)


def test_table9_dry_run_shows_each_fused_nets_own_scales(tmp_path, capsys):
    from vggnet.cli import main

    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "val").mkdir()
    assert main(["experiment", "table9", "--data", str(data), "--output-dir", str(tmp_path / "r"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    fusion = lines[[k for k, line in enumerate(lines) if line.startswith("# fusion ")][0] + 1]
    assert re.search(r"--checkpoint \S+/best\.pt --test-scales 256 --checkpoint \S+/best\.pt --test-scales 352,384 ",
                     fusion), fusion
    single = lines[[k for k, line in enumerate(lines) if line.startswith("# S384-Q352-384 ")][0] + 1]
    assert single.count("--test-scales") == 1 and "--test-scales 352,384" in single


def test_caltech_report_shows_mean_and_std_over_the_splits(tmp_path):
    """The paper's Caltech numbers are mean ± std over 3 splits: the report prints ours and the
    paper's that way, and the CSV gives each std a column of its own."""
    import csv
    import io
    import json

    from vggnet.experiments.report import build_report, to_csv, to_markdown
    from vggnet.experiments.runner import Overrides, plan_grid

    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "val").mkdir()
    plan = plan_grid(load_grid("appendix_b_caltech101"), data=data, root=tmp_path / "r",
                     overrides=Overrides(transfer_data=str(tmp_path)))
    pc = plan.cells["DE-stack"]   # what `vgg transfer --splits 3` writes: fractions, the mean and its std
    pc.dir.mkdir(parents=True)
    pc.result_file.write_text(json.dumps({"mean_class_accuracy": 0.9123, "mean_class_accuracy_std": 0.0045,
                                          "splits": [{"mean_class_accuracy": 0.91}] * 3}))
    report = build_report(plan)
    row = next(r for r in report["rows"] if r["cell"] == "DE-stack")
    assert row["ours_std"] == {"mean_class_accuracy": pytest.approx(0.45)}
    line = next(x for x in to_markdown(report).splitlines() if x.startswith("| D & E") and "stacked" in x)
    assert [c.strip() for c in line.split("|")][3:5] == ["91.23 ± 0.45", "92.7 ± 0.5"], line
    d = next(x for x in to_markdown(report).splitlines() if x.startswith("| D ") and "stacked" in x)
    assert [c.strip() for c in d.split("|")][3:5] == ["-", "91.8 ± 1.0"], d   # the paper's, though ours did not run
    rows = list(csv.DictReader(io.StringIO(to_csv(report))))
    de = next(r for r in rows if r["cell"] == "DE-stack")
    assert float(de["ours_mean_class_accuracy"]) == pytest.approx(91.23)
    assert float(de["ours_mean_class_accuracy_std"]) == pytest.approx(0.45)
    assert de["paper_mean_class_accuracy"] == "92.7" and de["paper_mean_class_accuracy_std"] == "0.5"
    # a grid without splits keeps its columns
    t9 = plan_grid(load_grid("table9"), data=data, root=tmp_path / "r9")
    assert "_std" not in to_csv(build_report(t9)).splitlines()[0]
