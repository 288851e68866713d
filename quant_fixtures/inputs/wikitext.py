"""WikiText-2 test text: from the Hub when reachable, else the vendored parquet; hash-checked."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

VENDORED_PARQUET = Path(__file__).resolve().parent / "data" / "wikitext-2-raw-v1-test.parquet"
WIKITEXT_SHA256 = "696cca6b65a171b0a358a4be6732cdfdf2dd6164a32e20fd70e3c13fc4dfae83"
# "vendored" (the default) reads the copy shipped in the package and never touches the network;
# "hub" downloads the split with `datasets`; "auto", the default of earlier versions, now reads the
# shipped copy too (the two texts are the same, sha256-checked): the Hub only when asked for.
SOURCES = ("vendored", "hub", "auto")
DEFAULT_SOURCE = "vendored"


class DatasetError(RuntimeError):
    """The evaluation text could not be loaded or failed its integrity check."""


@dataclass(frozen=True)
class EvalText:
    text: str
    sha256: str
    source: str  # "hub" or "vendored"
    rows: tuple[str, ...] = ()  # the split's rows (lines of wiki.test.raw), for the document-level protocol


HUB_PROBE_TIMEOUT_S = 10.0
USE_VENDORED = "use --dataset-source vendored (the same text, sha256-checked)"


def _rows_from_hub() -> list[str]:
    import datasets

    return list(datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"])


def _one_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def hub_problem() -> str | None:
    """Why --dataset-source hub cannot work here, found in seconds, or None: `datasets` retries an
    unreachable Hub for minutes. In offline mode (HF_HUB_OFFLINE) it reads only its cache, which the
    load itself checks quickly; otherwise one short request to the Hub endpoint `datasets` uses."""
    import datasets.config
    from huggingface_hub import get_session

    if datasets.config.HF_HUB_OFFLINE:
        return None
    endpoint = datasets.config.HF_ENDPOINT
    try:
        get_session().head(endpoint, timeout=HUB_PROBE_TIMEOUT_S)
    except Exception as exc:  # DNS, refused, timeout, proxy: the HTTP client's own exception types
        return (
            f"--dataset-source hub: the Hub ({endpoint}) cannot be reached ({_one_line(exc)}); {USE_VENDORED}, "
            "or set HF_HUB_OFFLINE=1 to read the copy in the datasets cache"
        )
    return None


def _hub_failure(exc: Exception) -> DatasetError:
    """One line for a failed Hub load; in offline mode, that only the datasets cache was read."""
    import datasets.config

    failed = f"--dataset-source hub: WikiText-2 could not be loaded from the Hub: {_one_line(exc)}"
    if datasets.config.HF_HUB_OFFLINE:
        return DatasetError(
            f"{failed}; offline mode (HF_HUB_OFFLINE) reads only the datasets cache "
            f"({datasets.config.HF_DATASETS_CACHE}), which holds no usable copy: {USE_VENDORED}"
        )
    return DatasetError(failed)


def _rows_from_parquet(path: Path) -> list[str]:
    """The shipped split's rows. pyarrow directly: `datasets.load_dataset("parquet")` probes the
    network (a connection to its S3 host) even for a local file."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DatasetError(f"{path}: vendored WikiText-2 parquet is missing; reinstall the package")
    rows: list[str] = pq.read_table(path, columns=["text"]).column("text").to_pylist()  # pyarrow is untyped
    return rows


def join_rows(rows: list[str]) -> str:
    """The standard evaluation string: rows joined by a blank line."""
    return "\n\n".join(rows)


def load_wikitext2_test(source: str = DEFAULT_SOURCE, parquet: Path = VENDORED_PARQUET) -> EvalText:
    """Load WikiText-2 (raw) test as one string and verify its sha256.

    Only ``hub`` reaches the network (and fails rather than falling back: the user asked for the
    Hub); ``vendored`` and ``auto`` read the shipped parquet. The text is checked against
    WIKITEXT_SHA256 whichever source served it.
    """
    if source not in SOURCES:
        raise DatasetError(f"unknown dataset source {source!r}; valid: {', '.join(SOURCES)}")
    if source == "hub":
        try:
            rows, used = _rows_from_hub(), "hub"
        except Exception as exc:  # network, auth, offline mode or cache trouble
            raise _hub_failure(exc) from exc
    else:
        rows, used = _rows_from_parquet(parquet), "vendored"
    text = join_rows(rows)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if digest != WIKITEXT_SHA256:
        raise DatasetError(
            f"WikiText-2 text from {used} ({parquet if used == 'vendored' else 'Hub'}) has sha256 {digest}, "
            f"expected {WIKITEXT_SHA256}: the data is not the standard test split"
        )
    return EvalText(text=text, sha256=digest, source=used, rows=tuple(rows))


def tokenize_text(tokenizer: PreTrainedTokenizerBase, text: str) -> torch.Tensor:
    """Token ids (1-D int64 tensor) of the whole text with the tokenizer's default special tokens."""
    import torch

    ids = tokenizer(text, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)
