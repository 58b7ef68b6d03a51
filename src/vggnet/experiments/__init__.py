"""The paper's tables as experiment grids: `vgg experiment` (Tables 3-6, §4.1, Tables 8-9, Appendix B).

    grid.py     a grid YAML (configs/experiments/) read and checked: cells, rows, the paper's numbers
    runner.py   cells -> `vgg` command lines, cached under the hash of their settings, run in order
    report.py   the table in the paper's layout (ours beside the paper's), JSON / CSV / Markdown, plots
    cli.py      the `vgg experiment` command

Examples:

    vgg experiment list                                    # the grids
    vgg experiment list --output-dir runs/exp              # ... and which of their cells are done there
    vgg experiment table3 --data /data/imagenet --dry-run  # the torchrun command of every cell, in order
    vgg experiment table3 --data /data/imagenet            # run (or resume) the grid, then report
    vgg experiment table5 --data synth --width 0.0625 --fc-width 64 --crop-size 32 --epochs 4

Every cell is a `vgg train` / `vgg eval` / `vgg localize` / `vgg transfer` command
run in this process through `vggnet.cli.main`: no second implementation.
"""
