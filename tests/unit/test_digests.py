"""The block-wise file digest that identifies local weights, against a plain sequential computation."""

import hashlib
from pathlib import Path

import pytest
import torch

from quant_fixtures.models.sources import directory_identity
from quant_fixtures.store import digests
from quant_fixtures.store.stale import StaleStoreWarning


@pytest.mark.parametrize("size", [0, 1, 3 * 1024 + 17, 5 * 1024])
def test_block_digest_is_sha256_over_block_digests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    monkeypatch.setattr(digests, "BLOCK_BYTES", 1024)  # several blocks, the last one short
    monkeypatch.setattr(digests, "READ_BYTES", 300)  # several reads a block, not dividing it
    data = bytes((i * 7919) % 251 for i in range(size))
    path = tmp_path / "w.bin"
    path.write_bytes(data)
    plain = hashlib.sha256(
        b"".join(hashlib.sha256(data[o : o + 1024]).digest() for o in range(0, size, 1024))
    ).hexdigest()
    assert digests.sha256_blocks(path, workers=3) == plain
    assert digests.sha256_blocks(path, workers=1) == plain


def test_a_changed_byte_in_any_block_changes_the_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digests, "BLOCK_BYTES", 1024)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    weights = model / "model.safetensors"
    weights.write_bytes(bytes(4096))
    first = directory_identity(model, tmp_path / "cache")
    assert first.startswith("sha256-blocks:")
    assert directory_identity(model, tmp_path / "cache") == first  # memoised, same answer
    data = bytearray(4096)
    data[3000] = 1  # third block
    weights.write_bytes(bytes(data))
    assert directory_identity(model, tmp_path / "cache") != first


def test_an_edited_digest_memo_is_recomputed_and_says_so(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(bytes(4096))
    first = directory_identity(model, tmp_path / "cache")
    memos = sorted((tmp_path / "cache" / "digests").iterdir())
    for memo in memos:
        memo.write_text("edited")
    with pytest.warns(StaleStoreWarning) as caught:
        assert directory_identity(model, tmp_path / "cache") == first
    said = {str(w.message).split(": ", 1)[0]: str(w.message) for w in caught}  # memo file -> message
    assert set(said) == {str(m) for m in memos}
    assert any("memoised digest of model.safetensors is not a sha256" in message for message in said.values())


@pytest.mark.parametrize(
    "tensor",
    [
        torch.arange(24, dtype=torch.float16).reshape(2, 3, 4) / 7,
        torch.arange(24, dtype=torch.float64).reshape(4, 6).t(),  # not contiguous
        torch.tensor([True, False, True]),
        torch.tensor(3, dtype=torch.int64),  # no dimensions
        torch.zeros(0, 5, dtype=torch.int16),
    ],
    ids=["float16", "float64-transposed", "bool", "scalar", "empty"],
)
def test_the_tensors_digest_is_sha256_of_name_dtype_shape_and_c_order_bytes(tensor: torch.Tensor) -> None:
    """Stored references keep their digests: the same sha256 as hashing a plain copy of the bytes."""
    other = torch.arange(5, dtype=torch.float32)
    plain = hashlib.sha256()
    for name, t in (("a", other), ("b", tensor)):
        plain.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        plain.update(t.contiguous().numpy().tobytes())
    assert digests.tensors_digest({"b": tensor, "a": other}) == plain.hexdigest()


def test_the_tensors_digest_reads_bfloat16_and_sees_every_byte() -> None:
    t = torch.arange(8, dtype=torch.bfloat16)
    before = digests.tensors_digest({"h": t})
    plain = hashlib.sha256(b"h:torch.bfloat16:(8,)" + t.view(torch.int16).numpy().tobytes()).hexdigest()
    assert before == plain
    t[5] = 100.0
    assert digests.tensors_digest({"h": t}) != before
