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
