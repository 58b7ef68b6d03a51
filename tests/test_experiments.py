"""`vgg experiment`: grids load and resolve, cells are cached by the hash of their settings,
an interrupted grid resumes, a changed cell reruns with its dependants only, --dry-run's
commands produce the same cache, the printed table is the JSON's, bad grids are refused."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from vggnet import cli
from vggnet.data.synthetic import write_synthetic
from vggnet.errors import UserError
from vggnet.experiments.grid import known_grids, load_grid
from vggnet.experiments.runner import plan_grid

# tiny nets, tiny data: every pixel size of the grid x 32/224
SHRINK = ["--width", "0.0625", "--fc-width", "32", "--crop-size", "32", "--epochs", "1", "--batch-size", "8",
          "--amp", "off", "--workers", "0", "--quiet"]

TWO_CELLS = """
name: tiny
title: "A tiny grid"
paper_source: "made up for the test"
plots: [depth, test_scale]
defaults: {lr: 0.01, init: glorot, dropout: 0.0}
cells:
  A-S256: {settings: {model: A, scale: 256}}
  A-S256-Q256: {kind: eval, nets: [A-S256], settings: {test_scales: [256], method: dense}}
columns: [net, test Q]
rows:
  - {cell: A-S256-Q256, net: A, test Q: "256", paper: {top1_error: 29.6, top5_error: 10.4}}
"""


class Counter:
    """Counts the `vgg` commands the grid runs (by command), optionally failing or interrupting one."""

    def __init__(self, monkeypatch, fail=None, interrupt=None, signalled=None):
        self.real = cli.main
        self.calls: list[list[str]] = []
        self.fail, self.interrupt, self.signalled = fail, interrupt, signalled
        monkeypatch.setattr(cli, "main", self)

    def __call__(self, argv):
        argv = list(argv)
        if argv[0] == "experiment":
            return self.real(argv)
        self.calls.append(argv)
        if self.interrupt and self.interrupt(argv):
            raise KeyboardInterrupt
        if self.fail and self.fail(argv):
            raise RuntimeError("boom: a cell that raises")
        if self.signalled and self.signalled(argv):
            return 130  # what `vgg train` returns after SIGINT (it checkpoints first)
        return self.real(argv)

    def count(self, command: str) -> int:
        return sum(a[0] == command for a in self.calls)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("exp_data")
    write_synthetic(root, classes=3, train=24, val=9, seed=0, image_size=(40, 56))
    return root


def _grid(tmp_path: Path, text: str = TWO_CELLS, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _run(grid: Path, data: Path, out: Path, *extra: str) -> int:
    return cli.main(["experiment", str(grid), "--data", str(data), "--output-dir", str(out), *SHRINK, *extra])


@pytest.fixture(scope="module")
def done_run(tmp_path_factory, data) -> tuple[Path, Path]:
    """The two-cell grid run once, end to end (copied by the tests that change it)."""
    tmp = tmp_path_factory.mktemp("exp_done")
    grid = _grid(tmp)
    assert _run(grid, data, tmp / "run") == 0
    return grid, tmp / "run"


def _copy(done_run, tmp_path) -> tuple[Path, Path]:
    grid, run = done_run
    shutil.copytree(run, tmp_path / "run")
    return grid, tmp_path / "run"


def _cells(run: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (run / "cells").glob("*/cell.json")}


# --------------------------------------------------------------------------- end to end


def test_two_cell_grid_end_to_end(done_run):
    grid, run = done_run
    report = json.loads((run / "reports" / "tiny" / "report.json").read_text())
    assert [c["status"] for c in report["cells"].values()] == ["done", "done"]
    row = report["rows"][0]
    assert row["paper"] == {"top1_error": 29.6, "top5_error": 10.4}
    ours = row["ours"]["top1_error"]
    assert 0.0 <= ours <= 100.0
    # our number is the evaluation's own overall result, at Q = 256 x 32/224 = 37
    ev = json.loads(Path(report["cells"]["A-S256-Q256"]["dir"], "eval.json").read_text())
    assert ours == ev["overall"]["top1_error"]
    assert ev["nets"][0]["test_scales"] == [37]
    assert report["environment"]["torch"] and report["environment"]["date"]
    for png in ("depth.png", "test_scale.png"):  # the plots the grid asks for, drawn without a display
        assert (run / "reports" / "tiny" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["plots"] == ["depth.png", "test_scale.png"]
    csv_text = (run / "reports" / "tiny" / "report.csv").read_text()
    assert f"{ours}" in csv_text and "29.6" in csv_text


def test_printed_table_numbers_are_the_json_numbers(done_run, data, tmp_path, monkeypatch, capsys):
    grid, run = _copy(done_run, tmp_path)
    counter = Counter(monkeypatch)
    assert _run(grid, data, run, "--report-only") == 0
    assert counter.calls == []
    out = capsys.readouterr().out
    report = json.loads((run / "reports" / "tiny" / "report.json").read_text())
    line = next(ln for ln in out.splitlines() if ln.startswith("| A "))
    cols = [c.strip() for c in line.strip("|").split("|")]
    # net, test Q, ours top-1, paper top-1, ours top-5, paper top-5, status
    assert float(cols[2]) == round(report["rows"][0]["ours"]["top1_error"], 2)
    top5 = report["rows"][0]["ours"]["top5_error"]  # null ("n/a") with 5 classes or fewer
    assert (cols[4] == "-") if top5 is None else (float(cols[4]) == round(top5, 2))
    assert cols[3] == "29.6" and cols[5] == "10.4"
    assert (run / "reports" / "tiny" / "report.md").read_text().count(line) == 1


def test_interrupted_grid_resumes_without_rerunning_finished_cells(data, tmp_path, monkeypatch):
    grid = _grid(tmp_path)
    counter = Counter(monkeypatch, interrupt=lambda argv: argv[0] == "eval")
    assert _run(grid, data, tmp_path / "run") == 130  # stopped in the middle, as Ctrl-C would
    last = next((tmp_path / "run" / "cells").glob("train-*/run/last.pt"))
    mtime = last.stat().st_mtime_ns
    assert not list((tmp_path / "run" / "cells").glob("eval-*/eval.json"))
    counter.interrupt = None
    assert _run(grid, data, tmp_path / "run") == 0
    assert counter.count("train") == 1 and counter.count("eval") == 2  # the eval once interrupted, once done
    assert last.stat().st_mtime_ns == mtime  # the finished training run was not touched
    assert _run(grid, data, tmp_path / "run") == 0
    assert counter.count("train") == 1 and counter.count("eval") == 2  # a finished grid runs nothing


def test_changed_cell_reruns_itself_and_its_dependants_only(done_run, tmp_path, monkeypatch):
    grid, run = _copy(done_run, tmp_path)
    counter = Counter(monkeypatch)
    data = json.loads((run / "reports/tiny/plan.json").read_text())["data"]
    # the evaluation's test scale changes: only the evaluation reruns
    changed = _grid(tmp_path, TWO_CELLS.replace("test_scales: [256]", "test_scales: [288]"), "changed.yaml")
    assert _run(changed, Path(data), run) == 0
    assert [a[0] for a in counter.calls] == ["eval"]
    # the training cell's lr changes: it and the evaluation that depends on it rerun
    changed2 = _grid(tmp_path, TWO_CELLS.replace("lr: 0.01", "lr: 0.02"), "changed2.yaml")
    assert _run(changed2, Path(data), run) == 0
    assert [a[0] for a in counter.calls] == ["eval", "train", "eval"]
    # a grid that shares the training cell (same settings) does not train it again
    shared = _grid(tmp_path, TWO_CELLS.replace("name: tiny", "name: other"), "other.yaml")
    assert _run(shared, Path(data), run) == 0
    assert [a[0] for a in counter.calls] == ["eval", "train", "eval"]
    # execution settings are not part of a cell's identity
    assert _run(grid, Path(data), run, "--device", "cpu") == 0
    assert len(counter.calls) == 3


def test_failed_cell_is_reported_with_its_log_and_the_rest_goes_on(data, tmp_path, monkeypatch, capsys):
    text = TWO_CELLS.replace("columns:", """  A-S256-Q288: {kind: eval, nets: [A-S256], settings: {test_scales: [288], method: dense}}
columns:""") + """  - {cell: A-S256-Q288, net: A, test Q: "288"}\n"""
    grid = _grid(tmp_path, text)
    counter = Counter(monkeypatch, fail=lambda argv: argv[0] == "eval" and "37" in argv)
    assert _run(grid, data, tmp_path / "run") == 1
    report = json.loads((tmp_path / "run" / "reports" / "tiny" / "report.json").read_text())
    failed = report["cells"]["A-S256-Q256"]
    assert failed["status"] == "failed" and "boom" in failed["error"]
    assert "RuntimeError: boom" in Path(failed["log"]).read_text()
    assert report["cells"]["A-S256-Q288"]["status"] == "done"  # the other evaluation still ran
    assert [r["status"] for r in report["rows"]] == ["failed", "done"]
    assert "failed" in (tmp_path / "run" / "reports" / "tiny" / "report.md").read_text()
    # the next run retries the failed cell only
    counter.fail = None
    assert _run(grid, data, tmp_path / "run") == 0
    assert [a[0] for a in counter.calls].count("train") == 1


def test_dry_run_commands_run_by_hand_fill_the_same_cache(done_run, data, tmp_path, monkeypatch, capsys):
    grid, reference = done_run
    assert _run(grid, data, tmp_path / "run", "--dry-run") == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if not ln.startswith("#")]
    assert len(lines) == 2 and all("torchrun --standalone --nproc-per-node=1 -m vggnet.cli" in ln for ln in lines)
    assert "train" in lines[0] and " eval " in lines[1]  # dependency order
    assert not (tmp_path / "run").exists()  # a dry run runs nothing and writes nothing
    for line in lines:
        mkdir, command = line.split(" && ", 1)
        Path(shlex.split(mkdir)[2]).mkdir(parents=True, exist_ok=True)
        words = shlex.split(command)
        argv = words[words.index("vggnet.cli") + 1:]
        assert cli.main(argv) == 0  # by hand, as a cluster job would
    counter = Counter(monkeypatch)
    assert _run(grid, data, tmp_path / "run") == 0
    assert counter.calls == []  # everything was found done
    ours = json.loads((tmp_path / "run" / "reports/tiny/report.json").read_text())["rows"][0]["ours"]
    theirs = json.loads((reference / "reports/tiny/report.json").read_text())["rows"][0]["ours"]
    assert ours == theirs  # the same numbers as the grid run itself (CPU, workers 0: deterministic)
    assert sorted(p.name for p in (tmp_path / "run" / "cells").iterdir()) == \
        sorted(p.name for p in (reference / "cells").iterdir())  # the same cache directories


# --------------------------------------------------------------------------- the shipped grids


@pytest.mark.parametrize("name", ["table3", "table4", "table5", "table6", "b_vs_b5x5", "table8", "table9",
                                  "appendix_b"])
def test_shipped_grids_load_and_keep_the_papers_chain(name):
    grid = load_grid(name)
    order = grid.order()
    assert set(order) == set(grid.cells)
    for cell in grid.cells.values():
        for dep in cell.needs():
            assert order.index(dep) < order.index(cell.name)
        s = cell.settings
        if cell.kind == "train" and s.get("model") not in ("A", "A-LRN", "B-5x5") and s.get("init") != "glorot":
            scale = str(s["scale"])
            # §3.1: deeper nets from A at S=256; S=384 from S=256 and jittered S from S=384, lr 1e-3
            expected = {"256": "A-S256", "384": f"{s['model']}-S256", "256:512": f"{s['model']}-S384"}[scale]
            assert s["init"] == f"from:{expected}"
            assert s.get("lr", 0.01) == (0.01 if scale == "256" else 0.001)
    assert grid.rows and all(r.cell in grid.cells for r in grid.rows)


def test_tables_3_and_4_share_their_training_runs(tmp_path, data):
    t3 = plan_grid(load_grid("table3"), data=data, root=tmp_path)
    t4 = plan_grid(load_grid("table4"), data=data, root=tmp_path)
    for name, pc in t4.cells.items():
        if pc.cell.kind == "train":
            assert t3.cells[name].dir == pc.dir


def test_paper_numbers_of_table3():
    rows = {r.cell: r.paper for r in load_grid("table3").rows}
    assert rows["A-S256-Q256"] == {"top1_error": 29.6, "top5_error": 10.4}
    assert rows["E-S256-512-Q384"] == {"top1_error": 25.5, "top5_error": 8.0}


def test_crop_override_scales_every_pixel_size(tmp_path, data):
    plan = plan_grid(load_grid("table5"), data=data, root=tmp_path,
                     overrides=__import__("vggnet.experiments.runner", fromlist=["Overrides"]).Overrides(
                         train={"crop_size": 64}))
    argv = plan.cells["D-S256-512"].argv
    assert argv[argv.index("--scale") + 1] == "73:146"  # [256;512] x 64/224
    ev = plan.cells["D-S256-512-both"].argv
    assert ev[ev.index("--test-scales") + 1] == "73,110,146"


def test_grids_needing_missing_commands_say_so(tmp_path, data, monkeypatch, capsys):
    for command in ("localize", "transfer"):
        monkeypatch.delitem(cli.COMMANDS, command, raising=False)
    assert cli.main(["experiment", "table8", "--data", str(data), "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "needs `vgg localize`" in err and "--dry-run" in err
    # the dry run still prints the commands a user with that command would run
    assert cli.main(["experiment", "table8", "--data", str(data), "--output-dir", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "-m vggnet.cli localize train" in out and "--head scr --finetune fc" in out
    assert "-m vggnet.cli localize eval" in out and "--protocol central" in out


def test_list_shows_grids_and_done_cells(done_run, tmp_path, capsys):
    grid, run = done_run
    assert cli.main(["experiment", "list", "--output-dir", str(tmp_path / "empty")]) == 0
    out = capsys.readouterr().out
    for name in known_grids():
        assert f"  {name} " in out
    assert "cells done" not in out
    assert cli.main(["experiment", "list", "--output-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "tiny: 2/2 cells done" in out
    assert re.search(r"A-S256\s+done", out) and re.search(r"A-S256-Q256\s+done", out)
    # a cell whose result is removed is no longer done
    ev = next((run / "cells").glob("eval-*/eval.json"))
    ev.rename(run / "moved.json")
    try:
        assert cli.main(["experiment", "list", "--output-dir", str(run)]) == 0
        assert "tiny: 1/2 cells done" in capsys.readouterr().out
    finally:
        (run / "moved.json").rename(ev)


# --------------------------------------------------------------------------- bad input


def test_unknown_grid_lists_the_known_ones(data, capsys):
    assert cli.main(["experiment", "table42", "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment grid 'table42'" in err
    for name in ("table3", "table5", "b_vs_b5x5", "appendix_b"):
        assert name in err


def test_unknown_cell_key_is_refused_naming_the_cell(tmp_path):
    path = _grid(tmp_path, TWO_CELLS.replace("A-S256: {settings:", "A-S256: {setings:"))
    with pytest.raises(UserError, match=r"cell 'A-S256': unknown key\(s\) 'setings'"):
        load_grid(path)
    path = _grid(tmp_path, TWO_CELLS.replace("model: A, scale: 256", "model: A, scael: 256"))
    with pytest.raises(UserError, match=r"cell 'A-S256': unknown training setting\(s\) 'scael'"):
        load_grid(path)


def test_dependency_cycle_is_refused_naming_the_cell(tmp_path):
    text = TWO_CELLS.replace("A-S256: {settings: {model: A, scale: 256}}", """A-S256: {settings: {model: A, scale: 256, init: "from:B-S256"}}
  B-S256: {settings: {model: B, scale: 256, init: "from:A-S256"}}""")
    with pytest.raises(UserError, match=r"cell '[AB]-S256' depends on itself through"):
        load_grid(_grid(tmp_path, text))


def test_missing_dependency_and_bad_settings_are_refused(tmp_path, data):
    with pytest.raises(UserError, match=r"cell 'A-S256-Q256' needs 'Z', which is not a cell"):
        load_grid(_grid(tmp_path, TWO_CELLS.replace("nets: [A-S256]", "nets: [Z]")))
    grid = load_grid(_grid(tmp_path, TWO_CELLS.replace("model: A,", "model: F,")))
    with pytest.raises(UserError, match=r"cell 'A-S256': --model"):
        plan_grid(grid, data=data, root=tmp_path)


def test_init_scheme_replaces_random_init_but_keeps_the_chain(tmp_path, data):
    from vggnet.experiments.runner import Overrides

    plan = plan_grid(load_grid("table3"), data=data, root=tmp_path, overrides=Overrides(init_scheme="glorot"))
    a, b = plan.cells["A-S256"].argv, plan.cells["B-S256"].argv
    assert a[a.index("--init") + 1] == "glorot"
    assert b[b.index("--init") + 1] == f"from:{plan.cells['A-S256'].run_dir / 'best.pt'}"
    assert b[b.index("--init-rest") + 1] == "glorot"
    plain = plan_grid(load_grid("table3"), data=data, root=tmp_path)
    assert plain.cells["A-S256"].hash != plan.cells["A-S256"].hash  # a different experiment, another directory


def test_settings_that_are_the_grids_design_cannot_be_overridden(data, capsys):
    assert cli.main(["experiment", "table3", "--data", str(data), "--set", "lr=0.1", "--dry-run"]) == 2
    assert "--set lr: this setting differs between cells" in capsys.readouterr().err
    assert cli.main(["experiment", "table3", "--data", str(data), "--set", "pca_std", "--dry-run"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_transfer_grid_needs_the_target_dataset(tmp_path, data):
    with pytest.raises(UserError, match="--transfer-data DIR"):
        plan_grid(load_grid("appendix_b"), data=data, root=tmp_path)


def test_a_cell_stopped_by_a_signal_stops_the_grid(data, tmp_path, monkeypatch):
    grid = _grid(tmp_path)
    counter = Counter(monkeypatch, signalled=lambda argv: argv[0] == "train")
    assert _run(grid, data, tmp_path / "run") == 130
    assert [a[0] for a in counter.calls] == ["train"]  # the evaluation did not start
    record = json.loads(next((tmp_path / "run" / "cells").glob("train-*/cell.json")).read_text())
    assert record["status"] == "interrupted" and record["returncode"] == 130
