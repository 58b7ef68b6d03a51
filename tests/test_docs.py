"""The documentation's commands and code run as written.

Every shell and Python block of README.md and docs/*.md is found here — fenced
(```bash, ```shell, ```sh, ```console, ```python, or an unlabelled fence whose
first line is a command) and indented (four spaces, after a blank line, first
line a command: `vgg`, `python`, `torchrun`, `make`, `pip`) — and each one
either runs in the suite or carries the marker, on the nearest non-blank line
before the block:

    <!-- not run: WHY (needs a GPU / ImageNet / a downloaded file / ...) -->

(an HTML comment, invisible on the rendered page). `test_every_block_is_runnable_or_marked`
(fast, no torch) fails on an unmarked block that the runner cannot run; the slow
`test_runnable_blocks_run` runs the unmarked ones, file by file, in order, in one
scratch folder per file (so a block may use what an earlier block of the same
file wrote), on tiny synthetic data:

- a shell block may hold only `vgg ...` / `python -m vggnet.cli ...` commands
  (with `\\` continuations and `#` comments); each runs in this process through
  `vggnet.cli.main` and must return 0. The placeholders `/data/imagenet`,
  `IMAGENET` and a bare `DIR` are replaced by a synthetic dataset (4 classes,
  32-48 px images) written into the scratch folder;
- a Python block runs with `exec`, the blocks of one file sharing a namespace.

Keep runnable blocks tiny (width 1/16, 32-px crops, one or two epochs): the
whole run has a budget of about two minutes on a loaded 2-core CPU.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^\s*<!--\s*not run:\s*(\S.*?)\s*-->\s*$")
COMMANDS = ("vgg ", "python ", "python3 ", "torchrun ", "make ", "pip ", "$ ")
SHELL = {"bash", "shell", "sh", "console"}
PLACEHOLDERS = [(re.compile(r"/data/imagenet\b"), "{data}"), (re.compile(r"\bIMAGENET\b"), "{data}"),
                (re.compile(r"(?<![\w/.-])DIR(?![\w/.-])"), "{data}")]


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the block's first code line
    lang: str  # "shell" or "python"
    code: str
    skip: str | None  # the marker's reason, None when the block must run

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _marker(lines: list[str], start: int) -> str | None:
    """The not-run reason on the nearest non-blank line above line index `start`."""
    i = start - 1
    while i >= 0 and not lines[i].strip():
        i -= 1
    m = MARKER.match(lines[i]) if i >= 0 else None
    return m.group(1) if m else None


def _kind(lang: str, first: str) -> str | None:
    first = first.strip()
    if lang == "python":
        return "python"
    if lang in SHELL or (not lang and first.startswith(COMMANDS)):
        return "shell"
    return None


def blocks(path: Path) -> list[Block]:
    """The shell and Python blocks of one Markdown file, fenced and indented."""
    lines = path.read_text(encoding="utf-8").split("\n")
    out, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(\s*)(```+)\s*([\w-]*)\s*$", lines[i])
        if fence:
            j = i + 1
            while j < len(lines) and not re.match(r"^\s*" + fence.group(2) + r"\s*$", lines[j]):
                j += 1
            body = lines[i + 1:j]
            indent = len(fence.group(1))
            first = next((b for b in body if b.strip()), "")
            kind = _kind(fence.group(3).lower(), first)
            if kind:
                code = "\n".join(b[indent:] if b[:indent].isspace() else b for b in body)
                out.append(Block(path, i + 2, kind, code, _marker(lines, i)))
            i = j + 1
            continue
        prev_blank = i == 0 or not lines[i - 1].strip()
        if prev_blank and lines[i].startswith("    ") and not re.match(r"^\s*([-*+]|\d+\.)\s", lines[i - 1] if i else ""):
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            body = [b[4:] for b in lines[i:j]]
            while body and not body[-1].strip():
                body.pop()
            if _kind("", body[0]) == "shell" and not _in_list(lines, i):
                out.append(Block(path, i + 1, "shell", "\n".join(body), _marker(lines, i)))
            i = j
            continue
        i += 1
    return out


def _in_list(lines: list[str], i: int) -> bool:
    """True when the indented lines at `i` continue a list item (then they are not a code block)."""
    k = i - 1
    while k >= 0 and not lines[k].strip():
        k -= 1
    return k >= 0 and bool(re.match(r"^\s*([-*+]|\d+\.)\s", lines[k])) and not lines[k].startswith("    ")


def shell_commands(code: str) -> list[str]:
    """The logical lines of a shell block: continuations joined, comments and blank lines dropped."""
    out, pending = [], ""
    for raw in code.split("\n"):
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line and not line.startswith("#"):
            out.append(line)
    return out


def vgg_argv(command: str) -> list[str] | None:
    """The argument list of a `vgg ...` or `python -m vggnet.cli ...` command; None for anything else."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return None
    if any(w in ("|", ">", ">>", "&&", ";", "<") for w in words):
        return None
    if words[:1] == ["vgg"]:
        return words[1:]
    if words[:3] in (["python", "-m", "vggnet.cli"], ["python3", "-m", "vggnet.cli"]):
        return words[3:]
    return None


ALL = [b for path in DOCS for b in blocks(path)]


def test_the_extractor_sees_fenced_indented_and_marked_blocks(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("Text\n\n```bash\nvgg info\n```\n\n<!-- not run: needs ImageNet -->\n```\nvgg train --data DIR\n```\n\n"
                   "Run\n\n    vgg synth out --classes 2 \\\n        --train 4\n\n```python\nimport vggnet\n```\n\n"
                   "- a list\n\n    continued item, not code\n\n```\nnot a command\n```\n")
    found = blocks(doc)
    assert [(b.lang, b.skip) for b in found] == [("shell", None), ("shell", "needs ImageNet"), ("shell", None),
                                                  ("python", None)]
    assert [c.split() for c in shell_commands(found[2].code)] == [["vgg", "synth", "out", "--classes", "2", "--train", "4"]]
    assert vgg_argv("vgg eval --checkpoint a.pt   # comment") == ["eval", "--checkpoint", "a.pt"]
    assert vgg_argv("torchrun -m vggnet.cli train") is None and vgg_argv("vgg train > log") is None


@pytest.mark.parametrize("block", ALL, ids=[b.where for b in ALL])
def test_every_block_is_runnable_or_marked(block):
    if block.skip is not None:
        return
    if block.lang == "shell":
        bad = [c for c in shell_commands(block.code) if vgg_argv(c) is None]
        assert not bad, (f"{block.where}: {bad[0]!r} cannot run in the suite; make it a `vgg` command on tiny "
                         f"data or put `<!-- not run: WHY -->` on the line before the block")
    else:
        compile(block.code, block.where, "exec")


def _synthetic(folder: Path) -> Path:
    from vggnet.data.synthetic import write_synthetic

    data = folder / "synthetic-data"
    if not data.exists():
        write_synthetic(data, classes=4, train=32, val=8, seed=0, force=True, image_size=(32, 48))
    return data


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in DOCS if any(b.skip is None for b in blocks(p))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_runnable_blocks_run(path, tmp_path, monkeypatch, capsys):
    from vggnet.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__docs__"}
    for block in (b for b in blocks(path) if b.skip is None):
        if block.lang == "python":
            exec(compile(block.code, block.where, "exec"), namespace)
            continue
        for command in shell_commands(block.code):
            for pattern, repl in PLACEHOLDERS:
                if pattern.search(command):
                    command = pattern.sub(repl.format(data=_synthetic(tmp_path)), command)
            argv = vgg_argv(command)
            code = main(argv)
            captured = capsys.readouterr()
            assert code == 0, f"{block.where}: `{command}` exited {code}:\n{captured.err[-2000:]}"
    assert os.getcwd() == str(tmp_path)
