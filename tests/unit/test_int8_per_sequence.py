"""Per-sequence LLM.int8 (models/int8_per_sequence.py) on one bitsandbytes layer, on the CPU: every
sequence of a batch gets what bitsandbytes' own layer gives it alone, padding never chooses outlier
columns, and bitsandbytes' own batching (the control) does move them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from bitsandbytes.nn import Linear8bitLt

bnb = pytest.importorskip("bitsandbytes")

from quant_fixtures.models.int8_per_sequence import (  # noqa: E402
    MAX_EXACT_SETS,
    install_per_sequence_int8,
    real_tokens,
    remove_per_sequence_int8,
)


@pytest.fixture
def layer() -> Linear8bitLt:
    torch.manual_seed(0)
    module: Linear8bitLt = bnb.nn.Linear8bitLt(64, 48, bias=True, has_fp16_weights=False, threshold=6.0)
    module.weight = bnb.nn.Int8Params(
        torch.randn(48, 64, dtype=torch.float16), requires_grad=False, has_fp16_weights=False
    )
    module.bias = torch.nn.Parameter(torch.randn(48) * 0.1)
    on_cpu: Linear8bitLt = module.to("cpu")  # bitsandbytes' .to() is untyped
    return on_cpu.eval()


def _alone(layer: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [layer(x[i : i + 1])[0] for i in range(x.shape[0])]


def test_sequences_with_their_own_outliers_get_what_they_get_alone(layer: Linear8bitLt) -> None:
    x = torch.randn(3, 5, 64) * 1.5
    x[0, 1, 3], x[1, 4, 10], x[2, 0, 20], x[2, 2, 3] = 9.0, -8.0, 7.0, 6.5  # three different column sets
    alone = _alone(layer, x)
    with torch.inference_mode():
        stock = layer(x)
        assert install_per_sequence_int8(layer) == 1
        ours = layer(x)
    for i in range(3):
        torch.testing.assert_close(ours[i], alone[i], rtol=0, atol=0)
    assert max(float((stock[i] - alone[i]).abs().max()) for i in range(3)) > 1e-2  # the control


def test_padding_takes_no_part_in_choosing_columns(layer: Linear8bitLt) -> None:
    x = torch.randn(2, 6, 64)
    x[1, 3, 7] = 12.0
    padded = torch.cat([torch.randn(2, 3, 64), x], 1)
    padded[0, 0, 40] = 50.0  # an outlier in sequence 0's padding
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[:, :3] = False
    alone = _alone(layer, x)
    install_per_sequence_int8(layer)
    with torch.inference_mode(), real_tokens(mask):
        ours = layer(padded)
    for i in range(2):
        torch.testing.assert_close(ours[i, 3:], alone[i], rtol=0, atol=0)


@pytest.mark.parametrize("sequences", [5, MAX_EXACT_SETS + 8])
def test_single_token_sequences_use_one_masked_product(layer: Linear8bitLt, sequences: int) -> None:
    """Decode steps (and more sets than MAX_EXACT_SETS) take one product over the union with the
    columns a row does not own zeroed; the same terms, so within float rounding of alone."""
    x = torch.randn(sequences, 1, 64) * 2
    for i in range(0, x.shape[0], 3):
        x[i, 0, i % 64] = 8.0 + i
    alone = _alone(layer, x)
    install_per_sequence_int8(layer)
    with torch.inference_mode():
        ours = layer(x)
    for i in range(x.shape[0]):
        torch.testing.assert_close(ours[i], alone[i], rtol=1e-5, atol=1e-5)


def test_remove_gives_bitsandbytes_its_forward_back(layer: Linear8bitLt) -> None:
    assert install_per_sequence_int8(layer) == 1
    assert "forward" in vars(layer)
    assert remove_per_sequence_int8(layer) == 1
    assert "forward" not in vars(layer) and remove_per_sequence_int8(layer) == 0
