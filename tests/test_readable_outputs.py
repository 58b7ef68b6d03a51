"""Outputs people read: `vgg info`'s Table 1 by stage, top-5 shown as n/a, reports in the sizes that ran."""

from vggnet.cli import main


def _table1(out: str) -> list[str]:
    lines = out.splitlines()
    return lines[1:lines.index("")]


def test_info_table1_rows_aligned_by_stage(capsys):
    assert main(["info"]) == 0
    rows = _table1(capsys.readouterr().out)
    header = rows[0].split()
    starts = [rows[0].index(name + " ") if name != header[-1] else rows[0].rindex(name) for name in header]

    def cell(row: str, column: int) -> str:
        end = starts[column + 1] if column + 1 < len(starts) else None
        return row[starts[column]:end].strip()

    # every maxpool of every net on the same five rows, the FC head on the same four
    pools = [i for i, row in enumerate(rows) if cell(row, 0) == "maxpool"]
    assert len(pools) == 5
    for i, row in enumerate(rows):
        cells = [cell(row, c) for c in range(len(header))]
        if i in pools:
            assert cells == ["maxpool"] * len(header), row
        elif "maxpool" in cells:
            raise AssertionError(f"a maxpool off its stage row: {row!r}")
    lrn = header.index("A-LRN")
    assert [cell(r, lrn) for r in rows].index("LRN") < pools[0]
    assert cell(rows[pools[0] + 1], lrn) == "conv3-128"  # A-LRN's LRN does not shift the rows below
    assert [cell(r, 0) for r in rows[-4:]] == ["FC-4096", "FC-4096", "FC-1000", "soft-max"]
    assert [cell(r, header.index("E")) for r in rows[-4:]] == ["FC-4096", "FC-4096", "FC-1000", "soft-max"]


def test_top5_is_na_in_the_training_log_csv_and_curves_with_few_classes(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from test_train import read_metrics, tiny  # tests/ is on sys.path (rootdir conftest)
    from vggnet import train

    drawn = {}
    save = Figure.savefig

    def spy(fig, *args, **kwargs):  # what curves.png draws, read from the figure
        drawn["labels"] = [line.get_label() for line in fig.axes[1].get_lines()]
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    out = tmp_path / "four"
    result = train(tiny(out, epochs=1))  # 4 classes: every label is in the top 5
    log = (out / "train.log").read_text()
    assert "top-5 err   n/a" in log and "top-5 err  0.00%" not in log
    assert [r["val_top5_error"] for r in read_metrics(out)] == [""]
    assert result["history"][-1]["val_top5_error"] is None
    assert drawn["labels"] == ["top-1"]

    out = tmp_path / "six"
    train(tiny(out, epochs=1, synthetic_classes=6))  # 6 classes: top-5 applies and is a number
    assert 0 <= float(read_metrics(out)[0]["val_top5_error"]) <= 100
    assert "top-5 err   n/a" not in (out / "train.log").read_text()
    assert drawn["labels"] == ["top-1", "top-5"]


def _plan(tmp_path, grid, **overrides):
    from vggnet.experiments.grid import load_grid
    from vggnet.experiments.runner import Overrides, plan_grid

    data = tmp_path / "data"
    for split in ("train", "val"):
        (data / split / "a").mkdir(parents=True, exist_ok=True)
    return plan_grid(load_grid(grid), data=data, root=tmp_path / "run", overrides=Overrides(**overrides))


def test_report_shows_the_pixel_sizes_that_ran_with_the_papers_beside(tmp_path, monkeypatch):
    import json

    from matplotlib.figure import Figure

    from vggnet.experiments.report import format_table, to_csv, write_report

    plan = _plan(tmp_path, "table4", train={"crop_size": 32})  # every size x 32/224
    cell = plan.cells["D-S256-Q3"]  # train S 256, test Q 224,256,288
    cell.dir.mkdir(parents=True)
    per_q = {"32": {"top1_error": 41.0}, "37": {"top1_error": 40.0}, "41": {"top1_error": 42.0},
             "all": {"top1_error": 39.0}}
    (cell.dir / "eval.json").write_text(json.dumps({"overall": {"top1_error": 39.0, "top5_error": 10.0},
                                                    "nets": [{"results": {"dense": per_q}}]}))
    drawn = {}
    save = Figure.savefig

    def spy(fig, path, *args, **kwargs):  # what each plot shows, read from its figure
        ax = fig.axes[0]
        drawn[str(path).rsplit("/", 1)[-1]] = {
            "legend": [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else [],
            "xlabels": [a.get_xlabel() for a in fig.axes] + [c.get_xlabel() for c in ax.child_axes],
            "x": [list(line.get_xdata()) for line in ax.get_lines()]}
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    report, out = write_report(plan)
    row = next(r for r in report["rows"] if r["cell"] == "D-S256-Q3")
    assert (row["train S"], row["test Q"]) == ("37", "32,37,41")
    assert row["paper_labels"] == {"train S": "256", "test Q": "224,256,288"}
    jitter = next(r for r in report["rows"] if r["cell"] == "D-S256-512-Q3")
    assert (jitter["train S"], jitter["test Q"]) == ("[37;73]", "37,55,73")
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in format_table(report).splitlines()]
    assert ["D", "37 (paper 256)", "32,37,41 (paper 224,256,288)", "39.00", "26.6"] == cells[6][:5]
    assert ["D", "[37;73] (paper [256;512])", "37,55,73 (paper 256,384,512)"] == cells[8][:3]
    text = to_csv(report)
    assert "paper train S" in text.splitlines()[0] and "37,\"32,37,41\",256,\"224,256,288\"" in text
    plot = drawn["test_scale.png"]
    assert plot["legend"] == ["D, S=37 (paper 256)"] and plot["x"][0] == [32, 37, 41]
    assert any("as run: crop 32" in x for x in plot["xlabels"])
    assert any("the paper's Q (crop 224)" in x for x in plot["xlabels"])


def test_report_init_labels_say_what_ran(tmp_path):
    from vggnet.experiments.report import build_report, format_table

    def inits(**overrides):
        report = build_report(_plan(tmp_path, "b_vs_b5x5", **overrides))
        return {r["cell"]: r["init"] for r in report["rows"]}, format_table(report)

    plain, _ = inits()
    assert plain["B5x5-S256-Q256"] == "scratch, Gaussian" and plain["B-S256-Q256"] == "from A"
    assert plain["B5x5-glorot-center"] == "scratch, Glorot" and plain["B5x5-S256-center"] == "scratch, Gaussian"
    glorot, table = inits(init_scheme="glorot")  # every random initialisation replaced by Glorot's
    assert glorot["B5x5-S256-Q256"] == "scratch, Glorot" and glorot["B-S256-Q256"] == "from A, rest Glorot"
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()]
    assert [c[:2] for c in cells[2:]] == [["B", "from A, rest Glorot"], ["B-5x5", "scratch, Glorot"],
                                          ["B", "scratch, Glorot"], ["B-5x5", "scratch, Glorot"],
                                          ["B", "from A, rest Glorot"], ["B-5x5", "scratch, Glorot"]]
