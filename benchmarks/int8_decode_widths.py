"""Greedy decoding of an LLM.int8 model on the GPU: the static path at given widths against the exact
(dynamic, eager) path, on a seed architecture with random weights and fewer layers.

    python benchmarks/int8_decode_widths.py [--model mistral7b] [--layers 4] [--batch 96]
                                            [--steps 64] [--widths 64,1024,full]

Builds the architecture (benchmarks/random_models.SEED_CONFIGS, ``--layers`` decoder layers) in
float16, saves it, loads it as the suite loads INT8 (per-sequence LLM.int8 layers), and decodes one
batch of random prompts: once per static width (a CUDA graph; "full" = the widest layer input) and
once on the exact path (with PyTorch's attention choice and with the prompt stages' one). Prints
seconds, whether the width overflowed (such a try stops at its first check), the widest union of
outlier columns seen, and, for a width that held, whether the tokens equal the exact path's.
A measurement, never a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

if TYPE_CHECKING:  # mypy names the scripts from the root; at run time benchmarks/ is on sys.path
    from benchmarks.random_models import SEED_CONFIGS, train_tokenizer
else:
    from random_models import SEED_CONFIGS, train_tokenizer


def main() -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from quant_fixtures.attention_kernels import prompt_attention
    from quant_fixtures.compute.decoding import _greedy
    from quant_fixtures.config import ModelSpec
    from quant_fixtures.models.int8_static import OverflowGuard
    from quant_fixtures.models.loading import load_model
    from quant_fixtures.models.sources import resolve_model
    from quant_fixtures.settings import LoadSettings
    from quant_fixtures.variants import VARIANTS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mistral7b", choices=sorted(SEED_CONFIGS))
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--widths", default="64,1024,full")
    parser.add_argument("--tokenizer", type=Path, help="a tokenizer folder to reuse (default: train one)")
    parser.add_argument("--device", default="cuda:0", help="cuda:N (cpu: a dry run of the script, no graphs)")
    args = parser.parse_args()

    values = dict(SEED_CONFIGS[args.model], num_hidden_layers=args.layers)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    work = Path(tempfile.mkdtemp(prefix="int8-decode-"))
    torch.manual_seed(0)
    cuda = args.device.startswith("cuda")
    with torch.device(args.device):
        AutoModelForCausalLM.from_config(config, dtype=torch.float16).save_pretrained(work / "model")
    if args.tokenizer is None:  # the suite's loader wants a tokenizer beside the weights
        args.tokenizer = work / "tokenizer"
        train_tokenizer(args.tokenizer)
    AutoTokenizer.from_pretrained(args.tokenizer).save_pretrained(work / "model")
    spec = ModelSpec(key="bench", path=str(work / "model"))
    model = load_model(spec, resolve_model(spec, work / "cache"), VARIANTS["int8"], LoadSettings(args.device)).model
    ids = torch.randint(3, config.vocab_size, (args.batch, args.prompt_tokens), device=args.device)
    mask = torch.ones_like(ids)
    full = max(config.hidden_size, config.intermediate_size)

    def decode(guard: OverflowGuard | None) -> tuple[torch.Tensor, float]:
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        out, _ = _greedy(model, ids, mask, args.steps, set(), cuda and guard is not None, guard)
        if cuda:
            torch.cuda.synchronize()
        return out, time.perf_counter() - started

    decode(None)  # warm-up: kernels and allocator
    exact, exact_s = decode(None)
    print(json.dumps({"path": "exact (eager)", "seconds": round(exact_s, 2)}), flush=True)
    with prompt_attention(args.device):  # the attention the suite's prompt stages run with
        decode(None)
        same, no_cudnn_s = decode(None)
    row = {"path": "exact (eager), prompt stages' attention (no cuDNN)", "seconds": round(no_cudnn_s, 2)}
    print(json.dumps(row | {"tokens_equal_exact": bool(torch.equal(same, exact))}), flush=True)
    for width in args.widths.split(","):
        columns = full if width == "full" else int(width)
        guard = OverflowGuard(args.device, columns)
        decode(guard)  # warm-up: capture at this width
        guard = OverflowGuard(args.device, columns)
        out, seconds = decode(guard)
        row = {
            "path": f"static, {columns} columns (cuda graph)",
            "seconds": round(seconds, 2),
            "overflowed": guard.overflowed(),
            "widest_union": guard.widest_union(),
            "steps_run": out.shape[1],  # an overflowed try stops at its first check
        }
        if not guard.overflowed():  # an overflowed try's tokens are thrown away by the suite
            row |= {
                "tokens_equal_exact": bool(torch.equal(out, exact)),
                "tokens_agree": round(float((out == exact).float().mean()), 4),
            }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
