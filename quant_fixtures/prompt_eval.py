"""Per-prompt harm of a variant against the FP16 reference: KL, top-1 agreement, NLL, flips.

KL(P_fp16 || Q_variant) is taken at each position whose next token is an FP16 response token,
over the FP16 top-k tokens plus one bucket for the rest (a lower bound of the exact KL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .generation import greedy_generate, pad_token_id, prompt_token_ids, response_logits
from .metrics.divergence import kl_topk, nll_of_targets, tail_mass, topk_reference
from .prompts import Prompt
from .reference import PromptReference, ReferenceKey


@dataclass
class PromptScore:
    """Per-position arrays (length = FP16 response length) for one prompt."""

    kl: np.ndarray
    top1: np.ndarray
    nll: np.ndarray
    tail: np.ndarray


def compute_reference(model: Any, tokenizer: Any, prompts: Sequence[Prompt], key: ReferenceKey, gen_batch: int,
                      score_batch: int, progress: Callable[[int], None] | None = None) -> PromptReference:
    """Greedy FP16 responses, then the FP16 top-k log-probs at every response position."""
    prompt_ids = [prompt_token_ids(tokenizer, p.prompt, key.use_chat_template) for p in prompts]
    limits = [min(p.max_new_tokens, key.max_new_tokens_cap or p.max_new_tokens) for p in prompts]
    responses = greedy_generate(model, tokenizer, prompt_ids, limits, gen_batch, progress)
    logp: list[Any] = [None] * len(prompts)
    idx: list[Any] = [None] * len(prompts)
    for i, logits in response_logits(model, prompt_ids, responses, score_batch, pad_token_id(model, tokenizer)):
        logp[i], idx[i] = (t.cpu() for t in topk_reference(logits, key.top_k))
    import torch

    for i in range(len(prompts)):  # empty responses (cannot happen with max_new_tokens >= 1) stay empty
        if logp[i] is None:
            logp[i], idx[i] = torch.zeros(0, key.top_k), torch.zeros(0, key.top_k, dtype=torch.int64)
    return PromptReference(key=key, prompt_ids=prompt_ids, response_ids=responses, topk_logp=logp, topk_idx=idx)


def score_against_reference(model: Any, tokenizer: Any, reference: PromptReference,
                            batch_size: int) -> list[PromptScore]:
    """Teacher-forced pass of the variant over prompt + FP16 response, scored against FP16."""
    scores: list[PromptScore | None] = [None] * len(reference.prompt_ids)
    pad = pad_token_id(model, tokenizer)
    for i, logits in response_logits(model, reference.prompt_ids, reference.response_ids, batch_size, pad):
        ref_logp, ref_idx = reference.topk_logp[i].to(logits.device), reference.topk_idx[i].to(logits.device)
        targets = logits.new_tensor(reference.response_ids[i], dtype=ref_idx.dtype)
        scores[i] = PromptScore(
            kl=kl_topk(ref_logp, ref_idx, logits).cpu().numpy(),
            top1=(logits.argmax(-1) == ref_idx[:, 0]).cpu().numpy(),
            nll=nll_of_targets(logits, targets).cpu().numpy(),
            tail=tail_mass(ref_logp).cpu().numpy(),
        )
    empty = np.zeros(0)
    return [s or PromptScore(empty, empty.astype(bool), empty, empty) for s in scores]


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
        records.append({
            "id": p.id, "category": p.category, "positions": n,
            "kl_mean": float(score.kl.mean()) if n else None,
            "kl_max": float(score.kl.max()) if n else None,
            "top1_agreement": float(score.top1.mean()) if n else None,
            "nll_fp16_tokens": float(score.nll.sum()), "tail_mass_mean": float(score.tail.mean()) if n else None,
            "first_divergence": first_divergence(ref_resp, resp), "exact_match": list(ref_resp) == list(resp),
            "fp16_correct": fp16_ok, "correct": ok, "flip": None if fp16_ok is None else fp16_ok != ok,
            "fp16_response": fp16_text, "response": text,
        })
    return records


def generate_responses(model: Any, tokenizer: Any, prompts: Sequence[Prompt], reference: PromptReference,
                       gen_batch: int, progress: Callable[[int], None] | None = None) -> list[list[int]]:
    """The variant's own greedy responses to the same prompt ids, with the FP16 length limits."""
    cap = reference.key.max_new_tokens_cap
    limits = [min(p.max_new_tokens, cap or p.max_new_tokens) for p in prompts]
    return greedy_generate(model, tokenizer, reference.prompt_ids, limits, gen_batch, progress)
