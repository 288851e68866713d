"""The run's choices, parsed once from the command line (plugin.build_session)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quant_fixtures.variants import VariantOptions


@dataclass(frozen=True)
class RunOptions:
    """The run's choices, parsed once from the command line."""

    models: list[str]
    variants: list[str]
    ctx: int
    ppl_max_tokens: int | None  # None: the whole test split
    ppl_stride: int | None
    results_dir: Path
    baselines_dir: Path
    cache_dir: Path
    batch_size: int
    device: str
    prompts_path: Path
    categories: tuple[str, ...] | None = None
    use_chat_template: bool = True
    max_new_tokens_cap: int | None = None  # None: each prompt's own max_new_tokens
    top_k: int = 256
    gen_batch_size: int = 96
    score_batch_size: int = 16
    exact_kl_max_mb: int = 1024  # keep the full FP16 distribution (exact KL) when it fits; 0: never
    skip_prompts: bool = False
    weight_dtype: str = "float16"
    nf4_compute_dtype: str | None = None
    nf4_double_quant: bool = False
    dataset_source: str = "auto"
    frozen_baselines: bool = False
    gate_mode: str = "enforce"  # "enforce" fails gate tests; "report" records verdicts only
    gate_on: str = "point"  # "point" or "upper" (the 95 % CI's upper bound)
    run_id: str = "local"  # shared by all xdist workers of one run

    @property
    def compute_dtype(self) -> str:
        return self.weight_dtype if self.device.startswith("cuda") else "float32"

    def variant_options(self) -> VariantOptions:
        return VariantOptions(weight_dtype=self.weight_dtype, compute_dtype=self.compute_dtype,
                              nf4_compute_dtype=self.nf4_compute_dtype, nf4_double_quant=self.nf4_double_quant)
