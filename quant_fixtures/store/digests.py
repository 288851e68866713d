"""The digests that key and validate stored results: of settings, of files, of tensors."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any


def settings_digest(key: Any) -> str:
    """sha256 of a dataclass of settings, field order independent."""
    return hashlib.sha256(json.dumps(asdict(key), sort_keys=True).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def tensors_digest(tensors: dict[str, Any]) -> str:
    """sha256 over names, dtypes, shapes and bytes of CPU tensors."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()
