"""How the long-context read's speed depends on its chunk length and sequences per pass.

    python benchmarks/long_context_chunks.py [--model mistral7b] [--sequences 32768x2,8192x6]
                                             [--chunks 1024,4096,16384] [--batch 1,6] [--json OUT]

A seed architecture with random weights (benchmarks/random_models.SEED_CONFIGS) is built on the GPU
in float16, and compute/long_context.score_in_chunks reads the same random token sequences at each
chunk length and sequences-per-pass cap (no hook: the read alone, head and log-softmax included).
The first read warms up and is not timed. Prints and optionally writes seconds, tokens per second and
peak memory per setting. A measurement for choosing the default, never a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

if TYPE_CHECKING:  # mypy names the scripts from the root; at run time benchmarks/ is on sys.path
    from benchmarks.random_models import SEED_CONFIGS
else:
    from random_models import SEED_CONFIGS


def parse_sequences(text: str) -> list[tuple[int, int]]:
    """``32768x2,8192x6`` -> [(32768, 2), (8192, 6)]: length and count."""
    out = []
    for part in text.split(","):
        length, _, count = part.partition("x")
        out.append((int(length), int(count or 1)))
    return out


def main() -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from quant_fixtures.compute.long_context import score_in_chunks
    from quant_fixtures.compute.memory import MemoryBudget
    from quant_fixtures.metrics.perplexity import Window

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mistral7b", choices=sorted(SEED_CONFIGS))
    parser.add_argument("--sequences", default="32768x2,8192x6")
    parser.add_argument("--chunks", default="1024,4096,16384")
    parser.add_argument("--batch", default="1,6")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()

    values = dict(SEED_CONFIGS[args.model])
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16).eval()
    groups = parse_sequences(args.sequences)
    total = sum(length * count for length, count in groups)
    ids = torch.randint(3, config.vocab_size, (total,))
    windows, begin = [], 0
    for length, count in groups:
        for _ in range(count):
            windows.append(Window(begin, begin + length, begin + 1))
            begin += length

    cuda = args.device.startswith("cuda")
    budget_device = "cuda:0" if args.device == "cuda" else args.device

    def read(chunk: int, batch: int) -> float:
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        score_in_chunks(model, ids, windows, chunk, "bench", budget=MemoryBudget(budget_device), batch_size=batch)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started

    read(min(int(c) for c in args.chunks.split(",")), 1)  # warm-up (kernels, allocator)
    rows: list[dict[str, object]] = []
    for batch in (int(b) for b in args.batch.split(",")):
        for chunk in (int(c) for c in args.chunks.split(",")):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            try:
                seconds = read(chunk, batch)
            except torch.OutOfMemoryError:
                rows.append({"chunk": chunk, "batch": batch, "seconds": None, "why": "out of memory"})
                if cuda:
                    torch.cuda.empty_cache()
                continue
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
            row: dict[str, object] = {
                "chunk": chunk,
                "batch": batch,
                "seconds": round(seconds, 3),
                "tokens_per_s": round(total / seconds),
            }
            row["peak_gib"] = round(peak, 2) if peak is not None else None
            rows.append(row)
            print(json.dumps(row), flush=True)
    record = {
        "model": args.model,
        "weights": "random",
        "card": torch.cuda.get_device_name() if cuda else "cpu",
        "sequences": args.sequences,
        "tokens": total,
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
