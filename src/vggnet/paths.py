"""Where a command may write: one policy for every output of every command.

A command's output is checked before any work, so that a mistake costs nothing:

- an output is never an input of the same command, nor inside an input folder
  (`vgg features CK --out CK` would replace the checkpoint it reads);
- a file is not written where a folder is (`--out runs/`), nor below a file
  (`--out notes.txt/x.pt`), nor into a folder this process cannot write;
- a name taken from a file the user edits (a grid's `name:`) stays inside the
  output folder it is joined to;
- several inputs of one name get several outputs (`a/x.jpg`, `b/x.jpg`).

Each refusal is a `UserError` naming the flag and both paths.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from vggnet.errors import UserError

__all__ = ["check_output", "check_output_dir", "inside", "distinct_outputs", "same_or_inside", "fingerprint", "folder_fingerprint"]


def same_or_inside(path: str | os.PathLike, other: str | os.PathLike) -> bool:
    """Is `path` the file or folder `other`, or inside the folder `other` (links and `..` resolved)?"""
    p, o = Path(path), Path(other)
    try:
        if p.exists() and o.exists() and os.path.samefile(p, o):
            return True
    except OSError:
        pass
    rp, ro = p.resolve(), o.resolve()
    return rp == ro or (ro.is_dir() and rp.is_relative_to(ro))


def _check_not_an_input(out: Path, inputs: Iterable[str | os.PathLike | None], flag: str) -> None:
    for item in inputs:
        if item is None or str(item) == "" or str(item).startswith("from:"):
            continue
        if same_or_inside(out, item):
            where = "is" if Path(out).resolve() == Path(item).resolve() or Path(item).is_file() else "is inside"
            raise UserError(f"{flag} {out}: {where} the input {item}, which the command reads; writing there "
                            f"would destroy it: give another path")


def _check_parents(path: Path, flag: str) -> None:
    """The folders above `path`: none of them a file, the nearest existing one writable."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            raise UserError(f"{flag} {path}: {parent} is a file, not a folder")
    existing = next((p for p in path.parents if p.exists()), Path("."))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: the folder {existing} is not writable (permission denied)")


def check_output(path: str | os.PathLike, *, flag: str, inputs: Sequence[str | os.PathLike | None] = ()) -> Path:
    """Check a file a command will write (before any work); returns it as a `Path`."""
    out = Path(path)
    if out.is_dir():
        raise UserError(f"{flag} {out}: is a folder; give the name of the file to write")
    if out.exists() and not out.is_file():
        raise UserError(f"{flag} {out}: exists and is not a regular file (a FIFO or a device); give another path")
    _check_parents(out, flag)
    if out.exists() and not os.access(out, os.W_OK):
        raise UserError(f"{flag} {out}: the file is not writable (permission denied)")
    _check_not_an_input(out, inputs, flag)
    return out


def check_output_dir(path: str | os.PathLike, *, flag: str, inputs: Sequence[str | os.PathLike | None] = ()) -> Path:
    """Check a folder a command will write into (before any work); returns it as a `Path`."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out}: is a file, not a folder; give a folder to write into")
    _check_parents(out, flag)
    if out.is_dir() and not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {out}: the folder is not writable (permission denied)")
    _check_not_an_input(out, inputs, flag)
    return out


def inside(folder: str | os.PathLike, name: str, *, what: str) -> Path:
    """`folder / name`, refused when `name` (from a file the user edits) would lead out of `folder`."""
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise UserError(f"{what} {name!r}: must be a relative name inside {folder} (no absolute path, no '..')")
    out = Path(folder) / name
    if not out.resolve().is_relative_to(Path(folder).resolve()):
        raise UserError(f"{what} {name!r}: leads out of {folder} (through a link); choose another name")
    return out


def distinct_outputs(inputs: Sequence[str | os.PathLike], folder: str | os.PathLike, suffix: str) -> list[Path]:
    """One output file in `folder` per input, named after it (`x.jpg` -> `x<suffix>`), all distinct.

    Inputs of one name from different folders (`a/x.jpg`, `b/x.jpg`) are told apart by
    their folder (`a_x.png`, `b_x.png`), then, if still equal, by a number.
    """
    stems = [Path(p).stem for p in inputs]
    names = [f"{Path(p).parent.name}_{s}" if stems.count(s) > 1 and Path(p).parent.name else s
             for p, s in zip(inputs, stems)]
    seen: dict[str, int] = {}
    out: list[Path] = []
    for name in names:
        n = seen.get(name, 0)
        seen[name] = n + 1
        out.append(Path(folder) / (f"{name}{suffix}" if n == 0 else f"{name}_{n + 1}{suffix}"))
    return out


def fingerprint(paths: Iterable[str | os.PathLike]) -> str:
    """SHA-256 of a list of files as they are now: each path with its size and modification time
    (nanoseconds), in the order given; a file missing now counts as missing.

    A cache keyed by it is not reused after a file is added, removed, replaced or
    rewritten (the usual ways a dataset changes), without reading the files.
    """
    import hashlib

    digest = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            digest.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            digest.update(f"{p}|missing\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """`fingerprint` of every file under `folder` (links followed, sorted): a dataset's identity as
    a cache key; deleting, adding or rewriting an image changes it."""
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames))
        if len(files) > 50_000_000:
            break
    return fingerprint(files)
