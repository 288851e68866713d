"""Per-prompt harm of a variant against the FP16 reference: KL, top-1 agreement, NLL, flips.

KL(P_fp16 || Q_variant) is taken at each position whose next token is an FP16 response token,
over the FP16 top-k tokens plus one bucket for the rest (a lower bound of the exact KL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from quant_fixtures.compute.memory import BatchLog, MemoryBudget
from quant_fixtures.compute.generation import greedy_generate, pad_token_id, prompt_token_ids, response_logits
from quant_fixtures.metrics.divergence import kl_exact, kl_topk, nll_of_targets, tail_mass, topk_reference
from quant_fixtures.inputs.prompts import Prompt
from quant_fixtures.store.prompt_reference import PromptReference, ReferenceKey


@dataclass
class PromptScore:
    """Per-position arrays (length = FP16 response length) for one prompt."""

    kl: np.ndarray
    top1: np.ndarray
    nll: np.ndarray
    tail: np.ndarray
    kl_exact: np.ndarray | None = None  # full-vocabulary KL, where the reference keeps P whole


_EMPTY = np.zeros(0)
NO_SCORE = PromptScore(_EMPTY, _EMPTY.astype(bool), _EMPTY, _EMPTY)  # a prompt with nothing scored


def reference_responses(model: Any, tokenizer: Any, prompts: Sequence[Prompt], key: ReferenceKey, gen_batch: int,
                        progress: Callable[[int], None] | None = None, budget: MemoryBudget | None = None,
                        log: BatchLog | None = None) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, greedy FP16 responses) of the suite."""
    prompt_ids = [prompt_token_ids(tokenizer, p.prompt, key.use_chat_template) for p in prompts]
    limits = [min(p.max_new_tokens, key.max_new_tokens_cap or p.max_new_tokens) for p in prompts]
    return prompt_ids, greedy_generate(model, tokenizer, prompt_ids, limits, gen_batch, progress, budget=budget, log=log)


def reference_logprobs(model: Any, tokenizer: Any, prompts: Sequence[Prompt], key: ReferenceKey,
                       prompt_ids: list[list[int]], responses: list[list[int]], score_batch: int,
                       budget: MemoryBudget | None = None, log: BatchLog | None = None) -> PromptReference:
    """The FP16 top-k log-probs (and, if the key says so, the whole distribution) at every response position."""
    import torch

    logp: list[Any] = [None] * len(prompts)
    idx: list[Any] = [None] * len(prompts)
    full: list[Any] | None = [None] * len(prompts) if key.full_logprobs else None
    vocab = model.get_output_embeddings().weight.shape[0]

    def keep(i: int, logits: Any) -> None:
        logits = logits.double()  # normalise in float64, store float32
        logp[i], idx[i] = (t.cpu() for t in topk_reference(logits, key.top_k))
        if full is not None:
            full[i] = torch.log_softmax(logits, -1).float().cpu()

    response_logits(model, prompt_ids, responses, score_batch, pad_token_id(model, tokenizer), keep, budget, log,
                    "reference scoring")
    for i in range(len(prompts)):  # empty responses (cannot happen with max_new_tokens >= 1) stay empty
        if logp[i] is None:
            logp[i], idx[i] = torch.zeros(0, key.top_k), torch.zeros(0, key.top_k, dtype=torch.int64)
            if full is not None:
                full[i] = torch.zeros(0, vocab)
    return PromptReference(key=key, prompt_ids=prompt_ids, response_ids=responses, topk_logp=logp, topk_idx=idx,
                           full_logp=full)


def compute_reference(model: Any, tokenizer: Any, prompts: Sequence[Prompt], key: ReferenceKey, gen_batch: int,
                      score_batch: int) -> PromptReference:
    """Greedy FP16 responses, then the FP16 log-probs at every response position."""
    prompt_ids, responses = reference_responses(model, tokenizer, prompts, key, gen_batch)
    return reference_logprobs(model, tokenizer, prompts, key, prompt_ids, responses, score_batch)


def score_against_reference(model: Any, tokenizer: Any, reference: PromptReference, batch_size: int,
                            budget: MemoryBudget | None = None, log: BatchLog | None = None,
                            stage: str = "scoring") -> list[PromptScore]:
    """Teacher-forced pass of the variant over prompt + FP16 response, scored against FP16."""
    scores: list[PromptScore | None] = [None] * len(reference.prompt_ids)
    pad = pad_token_id(model, tokenizer)

    def score(i: int, logits: Any) -> None:
        # float64 log-softmax: KL of two close distributions is a small difference of large logs.
        logits = logits.double()
        ref_logp, ref_idx = reference.topk_logp[i].to(logits.device), reference.topk_idx[i].to(logits.device)
        targets = logits.new_tensor(reference.response_ids[i], dtype=ref_idx.dtype)
        scores[i] = PromptScore(
            kl=kl_topk(ref_logp, ref_idx, logits).cpu().numpy(),
            top1=(logits.argmax(-1) == ref_idx[:, 0]).cpu().numpy(),
            nll=nll_of_targets(logits, targets).cpu().numpy(),
            tail=tail_mass(ref_logp).cpu().numpy(),
            kl_exact=(kl_exact(reference.full_logp[i].to(logits.device), logits).cpu().numpy()
                      if reference.full_logp is not None else None),
        )

    response_logits(model, reference.prompt_ids, reference.response_ids, batch_size, pad, score, budget, log, stage)
    return [s or NO_SCORE for s in scores]


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token (a length difference counts); None when identical."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def per_prompt_records(prompts: Sequence[Prompt], reference: PromptReference, scores: Sequence[PromptScore],
                       responses: Sequence[Sequence[int]], tokenizer: Any) -> list[dict[str, Any]]:
    """One report record per prompt (suite order)."""
    records = []
    for p, ref_resp, score, resp in zip(prompts, reference.response_ids, scores, responses):
        fp16_text = tokenizer.decode(ref_resp, skip_special_tokens=True)
        text = tokenizer.decode(resp, skip_special_tokens=True)
        fp16_ok, ok = p.is_correct(fp16_text), p.is_correct(text)
        n = len(score.kl)
        best = score.kl_exact if score.kl_exact is not None else score.kl
        records.append({
            "id": p.id, "category": p.category, "positions": n,
            # The prompt's KL: exact where the whole FP16 distribution is kept, else the top-k bound.
            "kl_mean": float(best.mean()) if n else None,
            "kl_max": float(best.max()) if n else None,
            "kl_basis": "exact" if score.kl_exact is not None else "topk",
            "kl_topk_mean": float(score.kl.mean()) if n else None,
            "kl_exact_mean": float(score.kl_exact.mean()) if n and score.kl_exact is not None else None,
            "top1_agreement": float(score.top1.mean()) if n else None,
            "nll_fp16_tokens": float(score.nll.sum()), "tail_mass_mean": float(score.tail.mean()) if n else None,
            "first_divergence": first_divergence(ref_resp, resp), "exact_match": list(ref_resp) == list(resp),
            "fp16_correct": fp16_ok, "correct": ok, "flip": None if fp16_ok is None else fp16_ok != ok,
            "fp16_response": fp16_text, "response": text,
        })
    return records


def generate_responses(model: Any, tokenizer: Any, prompts: Sequence[Prompt], reference: PromptReference,
                       gen_batch: int, progress: Callable[[int], None] | None = None, shift: int = 0,
                       budget: MemoryBudget | None = None, log: BatchLog | None = None) -> list[list[int]]:
    """The variant's own greedy responses to the same prompt ids, with the FP16 length limits
    (``shift``: see generation.length_batches)."""
    cap = reference.key.max_new_tokens_cap
    limits = [min(p.max_new_tokens, cap or p.max_new_tokens) for p in prompts]
    return greedy_generate(model, tokenizer, reference.prompt_ids, limits, gen_batch, progress, shift, budget, log)
