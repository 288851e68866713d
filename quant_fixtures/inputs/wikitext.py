"""WikiText-2 test text: from the Hub when reachable, else the vendored parquet; hash-checked."""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VENDORED_PARQUET = Path(__file__).resolve().parent / "data" / "wikitext-2-raw-v1-test.parquet"
WIKITEXT_SHA256 = "696cca6b65a171b0a358a4be6732cdfdf2dd6164a32e20fd70e3c13fc4dfae83"
SOURCES = ("auto", "hub", "vendored")


class DatasetError(RuntimeError):
    """The evaluation text could not be loaded or failed its integrity check."""


@dataclass(frozen=True)
class EvalText:
    text: str
    sha256: str
    source: str  # "hub" or "vendored"
    rows: tuple[str, ...] = ()  # the split's rows (lines of wiki.test.raw), for the document-level protocol


def _hub_offline() -> bool:
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return True
    # A quick reachability probe: without it, an offline machine waits ~25 s in retries.
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return False
    except OSError:
        return True


def _rows_from_hub() -> list[str]:
    import datasets

    return list(datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"])


def _rows_from_parquet(path: Path) -> list[str]:
    import datasets

    if not path.is_file():
        raise DatasetError(f"{path}: vendored WikiText-2 parquet is missing; reinstall the package")
    return list(datasets.load_dataset("parquet", data_files=str(path), split="train")["text"])


def join_rows(rows: list[str]) -> str:
    """The standard evaluation string: rows joined by a blank line."""
    return "\n\n".join(rows)


def load_wikitext2_test(source: str = "auto", parquet: Path = VENDORED_PARQUET) -> EvalText:
    """Load WikiText-2 (raw) test as one string and verify its sha256.

    ``auto`` uses the Hub when it answers and the vendored copy otherwise; both yield the same
    text, which is checked against WIKITEXT_SHA256 whichever source served it.
    """
    if source not in SOURCES:
        raise DatasetError(f"unknown dataset source {source!r}; valid: {', '.join(SOURCES)}")
    rows: list[str] | None = None
    used = "vendored"
    if source == "hub" or (source == "auto" and not _hub_offline()):
        try:
            rows, used = _rows_from_hub(), "hub"
        except Exception as exc:  # network, auth or cache trouble: fall back unless forced
            if source == "hub":
                raise DatasetError(f"WikiText-2 could not be loaded from the Hub: {exc}") from exc
    if rows is None:
        rows = _rows_from_parquet(parquet)
    text = join_rows(rows)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if digest != WIKITEXT_SHA256:
        raise DatasetError(
            f"WikiText-2 text from {used} ({parquet if used == 'vendored' else 'Hub'}) has sha256 {digest}, "
            f"expected {WIKITEXT_SHA256}: the data is not the standard test split"
        )
    return EvalText(text=text, sha256=digest, source=used, rows=tuple(rows))


def tokenize_text(tokenizer: Any, text: str) -> Any:
    """Token ids (1-D int64 tensor) of the whole text with the tokenizer's default special tokens."""
    import torch

    ids = tokenizer(text, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)
