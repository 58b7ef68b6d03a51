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
