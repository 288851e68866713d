"""Per-sequence LLM.int8 with static shapes (models/int8_static.py) on one bitsandbytes layer, on
the CPU: each sequence of a padded batch gets what bitsandbytes' own layer gives it alone (up to float
summation order), and a union of outlier columns wider than the static width is flagged, never
silently cut."""

from __future__ import annotations

from typing import Any

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

from quant_fixtures.models import int8_static  # noqa: E402
from quant_fixtures.models.int8_per_sequence import install_per_sequence_int8, real_tokens  # noqa: E402
from quant_fixtures.models.int8_static import (  # noqa: E402
    OverflowGuard,
    static_outlier_columns,
    static_per_sequence_int8_matmul,
    wider_columns,
)


@pytest.fixture
def layer() -> Any:
    torch.manual_seed(0)
    module = bnb.nn.Linear8bitLt(64, 48, bias=True, has_fp16_weights=False, threshold=6.0)
    module.weight = bnb.nn.Int8Params(
        torch.randn(48, 64, dtype=torch.float16), requires_grad=False, has_fp16_weights=False
    )
    module.bias = torch.nn.Parameter(torch.randn(48) * 0.1)
    return module.to("cpu").eval()


def _padded_batch() -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    torch.manual_seed(1)
    lengths = [5, 8, 3]
    width = max(lengths)
    x = torch.randn(len(lengths), width, 64) * 1.5
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, width - n :] = True
    x[0, 4, 3], x[1, 2, 10], x[1, 7, 3], x[2, 6, 20] = 9.0, -8.0, 6.5, 7.0  # own columns per sequence
    x[2, 0, 40] = 50.0  # in sequence 2's padding: chooses nothing
    return x, mask, lengths


def test_each_sequence_gets_what_bitsandbytes_gives_it_alone(layer: Any) -> None:
    x, mask, lengths = _padded_batch()
    width = x.shape[1]
    with torch.inference_mode():
        alone = [layer(x[i : i + 1, width - n :])[0] for i, n in enumerate(lengths)]
        stock = layer(x)
        install_per_sequence_int8(layer)
        guard = OverflowGuard("cpu")
        with real_tokens(mask), static_outlier_columns(guard):
            ours = layer(x)
    assert not guard.overflowed()
    for i, n in enumerate(lengths):
        scale = float(alone[i].abs().max())
        # the same terms in another order: float32 rounding of the sum, far below int8's own error
        assert float((ours[i, width - n :] - alone[i]).abs().max()) <= 1e-5 * scale
    control = max(float((stock[i, width - n :] - alone[i]).abs().max()) for i, n in enumerate(lengths))
    assert control > 1e-2  # bitsandbytes' own batch picks columns over every row and moves them


def test_static_and_dynamic_paths_agree_on_one_sequence(layer: Any) -> None:
    x = torch.randn(6, 64) * 2
    x[2, 5], x[4, 33] = 11.0, -7.5
    with torch.inference_mode():
        alone = layer(x)
        install_per_sequence_int8(layer)
        ours = static_per_sequence_int8_matmul(
            x, layer.state.CB, layer.state.SCB, layer.bias, 6.0, OverflowGuard("cpu", columns=4)
        )
    assert ours.shape == alone.shape
    assert float((ours - alone).abs().max()) <= 1e-5 * float(alone.abs().max())


def test_a_union_wider_than_the_static_columns_is_flagged(layer: Any) -> None:
    x = torch.randn(2, 3, 64)
    x[0, 0, :3] = 9.0
    x[1, 1, 10:13] = -9.0  # six outlier columns in the batch
    with torch.inference_mode():
        layer(x)  # bitsandbytes moves the int8 rows into the layer's state on first use
        fits, cut = OverflowGuard("cpu", columns=6), OverflowGuard("cpu", columns=5)
        static_per_sequence_int8_matmul(x, layer.state.CB, layer.state.SCB, layer.bias, 6.0, fits)
        static_per_sequence_int8_matmul(x, layer.state.CB, layer.state.SCB, layer.bias, 6.0, cut)
    assert not fits.overflowed()
    assert cut.overflowed()
    cut.reset()
    assert not cut.overflowed()


def test_without_a_guard_the_layer_takes_the_exact_path(layer: Any) -> None:
    x, mask, _ = _padded_batch()
    install_per_sequence_int8(layer)
    with torch.inference_mode(), real_tokens(mask):
        exact = layer(x)
        with static_outlier_columns(None):
            again = layer(x)
    torch.testing.assert_close(again, exact, rtol=0, atol=0)


def test_the_cpu_int8_product_is_bitsandbytes_product_in_exact_integers() -> None:
    from quant_fixtures.models.int8_static import scaled_int8_product

    torch.manual_seed(4)
    rows = torch.randint(-127, 128, (9, 64), dtype=torch.int8)
    weight = torch.randint(-127, 128, (24, 64), dtype=torch.int8)
    row_scale, weight_scale = torch.rand(9) * 3 + 0.1, torch.rand(24) + 0.1
    bias = torch.randn(24)
    theirs = torch.ops.bitsandbytes.int8_scaled_mm.default(
        rows, weight, row_scale, weight_scale, bias=bias, dtype=torch.float32
    )
    ours = scaled_int8_product(rows, weight, row_scale, weight_scale, bias, torch.float32)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)  # sums far below 2**24: both exact
    # 2,048 products of 127 * 127 pass 2**24, where a float32 sum rounds: the integers do not
    wide_rows = torch.full((17, 2048), 127, dtype=torch.int8)
    wide_weight = torch.full((8, 2048), 127, dtype=torch.int8)
    wide_weight[:, 0] = 126
    scales = torch.full((17,), 127.0), torch.full((8,), 127.0)
    exact = (wide_rows.long() @ wide_weight.long().t()).to(torch.int32)  # 33,032,065: odd, above 2**24
    float_sum = torch.matmul(wide_rows.float(), wide_weight.float().t()).to(torch.int32)
    assert not torch.equal(float_sum, exact)  # the control: bitsandbytes' float32 fallback rounds
    got = scaled_int8_product(wide_rows, wide_weight, *scales, None, torch.float32)
    expected = torch.ops.bitsandbytes.int8_mm_dequant.default(exact, *scales, dtype=torch.float32)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_where_int_mm_is_not_exact_bitsandbytes_multiplies(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU whose int8 GEMM saturates (oneDNN with AVX2 alone) the product is bitsandbytes' own."""
    from quant_fixtures.models import int8_static

    calls = [0]

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls[0] += 1
        return torch.zeros(1)

    monkeypatch.setattr(int8_static, "int_mm_is_exact", lambda: False)
    monkeypatch.setattr(int8_static.torch, "_int_mm", counted)
    rows, weight = torch.ones(3, 8, dtype=torch.int8), torch.ones(4, 8, dtype=torch.int8)
    got = int8_static.scaled_int8_product(rows, weight, torch.ones(3), torch.ones(4), None, torch.float32)
    assert calls[0] == 0
    torch.testing.assert_close(got, torch.full((3, 4), 8 / 127**2))


def test_the_guard_keeps_the_widest_union_and_a_wider_try_holds_it(layer: Any) -> None:
    x = torch.randn(2, 3, 64)
    x[0, 0, 0:5] = 8.0  # five outlier columns in sequence 0
    x[1, 2, 5:8] = -9.0  # three more in sequence 1: a union of eight
    guard = OverflowGuard("cpu", columns=4)
    with torch.inference_mode():
        alone = [layer(x[i : i + 1])[0] for i in range(2)]  # bitsandbytes' own layer, each alone
        install_per_sequence_int8(layer)
        static_per_sequence_int8_matmul(x, layer.state.CB, layer.state.SCB, layer.bias, 6.0, guard)
    assert guard.overflowed() and guard.widest_union() == 8
    wider = OverflowGuard("cpu", wider_columns(guard))
    assert wider.columns == 16  # a power of two of at least twice the widest union
    with torch.inference_mode():
        ours = static_per_sequence_int8_matmul(x, layer.state.CB, layer.state.SCB, layer.bias, 6.0, wider)
    assert not wider.overflowed()
    for i in range(2):
        assert float((ours[i] - alone[i]).abs().max()) <= 1e-5 * float(alone[i].abs().max())
    guard.reset()
    assert not guard.overflowed() and guard.widest_union() == 0


def test_a_guard_of_no_columns_is_refused() -> None:
    with pytest.raises(ValueError, match="columns must be at least 1, got 0"):
        OverflowGuard("cpu", columns=0)


def test_no_try_wider_than_the_static_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    guard = OverflowGuard("cpu", columns=64)
    with torch.inference_mode():
        guard.widest.fill_(300)
    assert wider_columns(guard) == 1024  # 2 x 300 -> the next power of two
    with torch.inference_mode():
        guard.widest.fill_(14336)  # Mistral-7B's whole MLP width
    assert wider_columns(guard) == 32768  # any layer's whole width, then
    monkeypatch.setattr(int8_static, "MAX_STATIC_COLUMNS", 1024)
    assert wider_columns(guard) is None  # past the limit: the exact path
    with torch.inference_mode():
        guard.widest.fill_(513)
    assert wider_columns(guard) is None  # 2048 > 1024
    monkeypatch.setattr(int8_static, "MAX_STATIC_COLUMNS", 4096)
    assert wider_columns(guard) == 2048


@pytest.mark.parametrize("columns", [64, 65, 4096])
def test_a_try_at_the_whole_width_gets_what_bitsandbytes_gives_each_sequence(layer: Any, columns: int) -> None:
    """At (or past) the layer's 64 input columns the float part takes every column without choosing."""
    x, mask, lengths = _padded_batch()
    x[1, 5, :20] = 7.0  # a wide union: twenty more columns
    width = x.shape[1]
    with torch.inference_mode():
        alone = [layer(x[i : i + 1, width - n :])[0] for i, n in enumerate(lengths)]
        install_per_sequence_int8(layer)
        guard = OverflowGuard("cpu", columns)
        with real_tokens(mask), static_outlier_columns(guard):
            ours = layer(x)
    assert not guard.overflowed() and guard.widest_union() >= 20
    for i, n in enumerate(lengths):
        assert float((ours[i, width - n :] - alone[i]).abs().max()) <= 1e-5 * float(alone[i].abs().max())
