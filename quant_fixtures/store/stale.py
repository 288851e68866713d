"""Saying why a stored file is computed again.

A stored file that is there but cannot be used (corrupt, truncated, edited, or made for other
settings) is recomputed and replaced, never used; the run says which file and why, as a warning
that pytest lists in its summary (xdist workers forward theirs). A file that is not there yet is
the ordinary first run and says nothing.
"""

from __future__ import annotations

import warnings
from pathlib import Path


class StaleStoreWarning(UserWarning):
    """A stored baseline, reference, cached token file or conversion is recomputed: it could not be used."""


def warn_recomputed(path: Path, reason: str) -> None:
    """Warn that ``path`` is recomputed because of ``reason`` (which may start with the path), if
    the file is there at all."""
    path = Path(path)
    if path.exists():
        why = reason.removeprefix(f"{path}: ")
        warnings.warn(StaleStoreWarning(f"{path}: recomputed, not used: {why}"), stacklevel=2)
