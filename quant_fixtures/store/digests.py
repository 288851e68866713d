"""The digests that key and validate stored results: of settings, of files, of tensors."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from _typeshed import DataclassInstance


def settings_digest(key: DataclassInstance) -> str:
    """sha256 of a dataclass of settings, field order independent."""
    return hashlib.sha256(json.dumps(asdict(key), sort_keys=True).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


BLOCK_BYTES = 64 << 20


READ_BYTES = 4 << 20  # reads of this size reuse memory; one 64 MiB read page-faults a fresh buffer


def _block_sha256(path: Path, offset: int) -> bytes:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        for start in range(offset, offset + BLOCK_BYTES, READ_BYTES):
            chunk = os.pread(fd, min(READ_BYTES, offset + BLOCK_BYTES - start), start)
            if not chunk:
                break
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.digest()


def sha256_blocks(path: Path, workers: int | None = None) -> str:
    """sha256 over the sha256 of each 64 MiB block, blocks hashed in parallel.

    One sha256 over a 10 GB shard runs on one core (~1 GB/s: 15 s for Mistral-7B's weights); the
    blocks' digests are computed by a thread pool (hashlib releases the GIL), so a large local model
    is identified in the time it takes to read it."""
    size = Path(path).stat().st_size
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        blocks = pool.map(lambda offset: _block_sha256(path, offset), range(0, size, BLOCK_BYTES))
        return hashlib.sha256(b"".join(blocks)).hexdigest()


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes (in C order) of CPU tensors.

    The bytes are hashed where they lie, through a uint8 view: a copy first (``tobytes``) made the
    digest of 0.53 GB of hidden states take 1.68 s against 0.30 s (2-core AMD EPYC), and Mistral-7B's
    2.4 GB corpus reference is hashed when stored and again when read."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()
