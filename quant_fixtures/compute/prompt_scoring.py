"""Per-prompt harm of a variant against the FP16 reference: KL, top-1 agreement, NLL, flips.

At each position whose next token is an FP16 response token the FP16 logits are rebuilt from the
stored FP16 hidden state and output head, and compared with the variant's over the whole vocabulary
(metrics/token_comparison.py). The FP16 top-k + tail-bucket bound (what a top-k cache would give) is
computed from the same logits and reported beside the exact KL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from quant_fixtures.compute.generation import greedy_generate, pad_token_id, prompt_token_ids, response_logits
from quant_fixtures.compute.memory import BatchLog, MemoryBudget, comparison_slice_elements
from quant_fixtures.compute.scoring import model_device
from quant_fixtures.inputs.prompts import Prompt
from quant_fixtures.metrics.divergence import kl_topk, tail_mass, topk_reference
from quant_fixtures.metrics.prompt_summary import PromptRecord
from quant_fixtures.metrics.reference_head import ReferenceHead
from quant_fixtures.metrics.token_comparison import compare_positions, empty_comparison
from quant_fixtures.models.int8_per_sequence import amplifies_float_noise
from quant_fixtures.store.prompt_reference import PromptReference, ReferenceKey

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class PromptScore:
    """Per-position results (length = FP16 response length) for one prompt."""

    positions: dict[str, np.ndarray]  # metrics.token_comparison fields: exact KL both ways, top-K, targets
    kl_topk: np.ndarray  # the FP16 top-k + tail-bucket lower bound of KL(P || Q)
    tail: np.ndarray  # FP16 probability mass outside its top-k

    @property
    def kl(self) -> np.ndarray:
        return self.positions["kl_pq"]

    @property
    def top1(self) -> np.ndarray:
        return self.positions["same_top1"]

    @property
    def nll(self) -> np.ndarray:
        """The variant's NLL of the FP16 response tokens."""
        return -self.positions["logq_target"]


NO_SCORE = PromptScore(empty_comparison(), np.zeros(0), np.zeros(0))  # a prompt with nothing scored


def reference_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    key: ReferenceKey,
    gen_batch: int,
    progress: Callable[[int], None] | None = None,
    budget: MemoryBudget | None = None,
    log: BatchLog | None = None,
) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, greedy FP16 responses) of the suite."""
    prompt_ids = [prompt_token_ids(tokenizer, p.prompt, key.use_chat_template) for p in prompts]
    limits = [p.new_tokens(key.max_new_tokens_cap) for p in prompts]
    return prompt_ids, greedy_generate(
        model, tokenizer, prompt_ids, limits, gen_batch, progress, budget=budget, log=log
    )


def reference_hidden_states(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    key: ReferenceKey,
    prompt_ids: list[list[int]],
    responses: list[list[int]],
    score_batch: int,
    budget: MemoryBudget | None = None,
    log: BatchLog | None = None,
    progress: Callable[[int], None] | None = None,
) -> PromptReference:
    """The FP16 final hidden states at every response position, and the FP16 output head."""
    import torch

    head = ReferenceHead.of(model)
    hidden: list[torch.Tensor] = [torch.zeros(0, head.weight.shape[1], dtype=head.weight.dtype)] * len(prompts)

    def keep(i: int, logits: torch.Tensor, states: torch.Tensor) -> None:
        hidden[i] = states.detach().to("cpu", copy=True)

    response_logits(
        model,
        prompt_ids,
        responses,
        score_batch,
        pad_token_id(model, tokenizer),
        keep,
        budget,
        log,
        "reference scoring",
        progress=progress,
    )
    return PromptReference(key=key, prompt_ids=prompt_ids, response_ids=responses, hidden=hidden, head=head)


def compute_reference(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    key: ReferenceKey,
    gen_batch: int,
    score_batch: int,
) -> PromptReference:
    """Greedy FP16 responses, then the FP16 hidden states at every response position."""
    prompt_ids, responses = reference_responses(model, tokenizer, prompts, key, gen_batch)
    return reference_hidden_states(model, tokenizer, prompts, key, prompt_ids, responses, score_batch)


def score_against_reference(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reference: PromptReference,
    batch_size: int,
    budget: MemoryBudget | None = None,
    log: BatchLog | None = None,
    stage: str = "scoring",
    progress: Callable[[int], None] | None = None,
) -> list[PromptScore]:
    """Teacher-forced pass of the variant over prompt + FP16 response, compared with FP16."""
    scores: list[PromptScore | None] = [None] * len(reference.prompt_ids)
    pad = pad_token_id(model, tokenizer)
    k = reference.key.top_k

    def score(i: int, logits: torch.Tensor, _states: torch.Tensor) -> None:
        slices = comparison_slice_elements(budget, reference.head.vocab) if budget is not None else None
        ref = reference.logits(i, logits.device)
        targets = logits.new_tensor(reference.response_ids[i]).long()
        ref_logp, ref_idx = topk_reference(ref.double(), k)
        scores[i] = PromptScore(
            positions=compare_positions(ref, logits, targets, slices),
            kl_topk=kl_topk(ref_logp, ref_idx, logits.double()).cpu().numpy(),
            tail=tail_mass(ref_logp).cpu().numpy(),
        )

    response_logits(
        model,
        reference.prompt_ids,
        reference.response_ids,
        batch_size,
        pad,
        score,
        budget,
        log,
        stage,
        equal_lengths=amplifies_float_noise(model) and model_device(model).type == "cpu",
        progress=progress,
    )
    return [s or NO_SCORE for s in scores]


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token (a length difference counts); None when identical."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def response_text(tokenizer: PreTrainedTokenizerBase, token_ids: list[int]) -> str:
    """A response's text, special tokens left out."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    if not isinstance(text, str):  # a list of texts is what a batch of id lists decodes to
        raise TypeError(f"decoding one response gave {type(text).__name__}, not its text")
    return text


def per_prompt_records(
    prompts: Sequence[Prompt],
    reference: PromptReference,
    scores: Sequence[PromptScore],
    responses: Sequence[list[int]],
    tokenizer: PreTrainedTokenizerBase,
) -> list[PromptRecord]:
    """One report record per prompt (suite order)."""
    records: list[PromptRecord] = []
    for p, ref_resp, score, resp in zip(prompts, reference.response_ids, scores, responses):
        fp16_text, text = response_text(tokenizer, ref_resp), response_text(tokenizer, resp)
        fp16_ok, ok = p.is_correct(fp16_text), p.is_correct(text)
        n = len(score.kl)
        records.append(
            {
                "id": p.id,
                "category": p.category,
                "positions": n,
                "kl_mean": float(score.kl.mean()) if n else None,  # exact, full vocabulary
                "kl_max": float(score.kl.max()) if n else None,
                "kl_reverse_mean": float(score.positions["kl_qp"].mean()) if n else None,
                "kl_topk_mean": float(score.kl_topk.mean()) if n else None,
                "top1_agreement": float(score.top1.mean()) if n else None,
                "nll_fp16_tokens": float(score.nll.sum()),
                "tail_mass_mean": float(score.tail.mean()) if n else None,
                "first_divergence": first_divergence(ref_resp, resp),
                "exact_match": list(ref_resp) == list(resp),
                "fp16_correct": fp16_ok,
                "correct": ok,
                "flip": None if fp16_ok is None else fp16_ok != ok,
                "fp16_response": fp16_text,
                "response": text,
            }
        )
    return records


def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    reference: PromptReference,
    gen_batch: int,
    progress: Callable[[int], None] | None = None,
    shift: int = 0,
    budget: MemoryBudget | None = None,
    log: BatchLog | None = None,
) -> list[list[int]]:
    """The variant's own greedy responses to the same prompt ids, with the FP16 length limits
    (``shift``: see generation.length_batches)."""
    limits = [p.new_tokens(reference.key.max_new_tokens_cap) for p in prompts]
    return greedy_generate(model, tokenizer, reference.prompt_ids, limits, gen_batch, progress, shift, budget, log)
