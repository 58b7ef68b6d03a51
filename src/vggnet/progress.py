"""Progress bars, one rule for every command: a bar is drawn only when stderr is a terminal.

A file, a pipe or a CI log would collect a bar's redraws as fragments
(`Q=64:   1%|...`); there the commands write one line per epoch or pass
instead. Callers ask for a bar with `progress_bar(..., enabled=...)` (their
`--no-progress`) and this module decides whether one is drawn. Imports nothing
of ours, so every part can use it.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable

__all__ = ["stderr_is_terminal", "progress_bar"]


def stderr_is_terminal() -> bool:
    """Whether progress bars can be drawn: stderr is a terminal, not a file, pipe or CI log."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 enabled: bool = True, **options: Any) -> Any:
    """A tqdm bar on stderr over `iterable` (or, with `iterable=None`, a bar updated by hand) when
    `enabled` and stderr is a terminal; otherwise `iterable` itself (None for a bar by hand)."""
    if not (enabled and stderr_is_terminal()):
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but a progress bar is not worth failing over
        return iterable
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, **{"leave": False, **options})
