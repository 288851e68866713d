"""One way to write a file or directory: into a temporary sibling, then renamed into place.

A reader never sees half a file; an error or an interrupt (Ctrl-C, SIGTERM: the plugin turns it
into KeyboardInterrupt) removes the temporary and leaves the previous version, if any, intact.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from filelock import BaseFileLock


@contextmanager
def atomic_path(path: Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (a file path, or an empty directory when
    ``directory``); when the block ends normally it replaces ``path``, otherwise it is removed.

    A directory replaces an existing one only if that one is gone by then: a concurrent writer
    that finished first wins, and this one's copy is dropped (both were built from the same input).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_sibling(path, directory)
    mode = stat.S_IMODE(tmp.stat().st_mode)  # what open() (mkdir) gives here: 0666 (0777) less the umask
    try:
        yield tmp
        if directory:
            try:
                tmp.rename(path)
            except OSError:
                if not path.is_dir():
                    raise
        else:
            os.chmod(tmp, mode)  # a writer may have put its own file there (safetensors does, with 0600)
            os.replace(tmp, path)
    finally:
        if directory:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _new_sibling(path: Path, directory: bool) -> Path:
    """A new, empty file (or directory) with a unique name beside ``path``, created with the mode a
    plain open() (mkdir) gives: 0666 (0777) less the umask. tempfile's 0600 (0700) would survive the
    rename and leave reports and caches unreadable to a CI artifact or a shared results folder."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            if directory:
                tmp.mkdir(mode=0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue  # another writer's temporary: draw another name
        return tmp


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def write_json_atomic(path: Path, document: object) -> None:
    """JSON (indented, NaN refused: it is not JSON) written atomically."""
    write_text_atomic(path, json.dumps(document, indent=2, allow_nan=False) + "\n")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """safetensors file with ``metadata`` plus a digest of the tensors (checked by load_tensors)."""
    from safetensors.torch import save_file

    from quant_fixtures.store.digests import tensors_digest

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={**metadata, "tensors_sha256": tensors_digest(tensors)})


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor] | None, dict[str, str], str]:
    """(tensors, metadata, "ok"), or (None, metadata, why not) for a missing, unreadable or
    corrupt file (its tensors no longer match the digest written with them)."""
    from safetensors import safe_open

    from quant_fixtures.store.digests import tensors_digest

    if not Path(path).is_file():
        return None, {}, f"{path}: not in the cache"
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except Exception as exc:  # truncated or not a safetensors file
        return None, {}, f"{path}: unreadable ({type(exc).__name__}: {exc})"
    if meta.get("tensors_sha256") != tensors_digest(tensors):
        return None, meta, f"{path}: content digest mismatch (corrupt)"
    return tensors, meta, "ok"


def file_lock(path: Path, timeout: float = -1) -> BaseFileLock:
    """An inter-process lock file (filelock); waits until the holder releases it."""
    from filelock import FileLock

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=timeout)
