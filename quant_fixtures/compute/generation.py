"""Batched greedy generation and batched teacher-forced scoring of prompt + response.

Generation pads on the left (new tokens follow every row's last one), scoring on the right (each
row's tokens keep the positions they have alone); both pass an attention mask, so a prompt's tokens
and scores do not depend on which other prompts share its batch (proved in the integration tests).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from quant_fixtures.compute.decoding import can_capture, static_greedy, supports_static_decoding
from quant_fixtures.compute.memory import BatchLog, MemoryBudget, run_batches, run_sized
from quant_fixtures.compute.scoring import (
    LOGPROB_ELEMENTS_PER_CHUNK,
    embedding_weight,
    head_weight,
    model_device,
    output_logits,
)
from quant_fixtures.models.int8_per_sequence import real_tokens

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, text: str, use_chat_template: bool) -> list[int]:
    """Token ids of one user prompt: through the chat template (with the generation prompt) when
    the tokenizer has one and it is wanted, else the plain text with default special tokens."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    return list(tokenizer(text)["input_ids"])


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}


def pad_token_id(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    for candidate in (tokenizer.pad_token_id, model.generation_config.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _left_pad(rows: Sequence[Sequence[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def _right_pad(rows: Sequence[Sequence[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def length_batches(lengths: Sequence[int], batch_size: int, shift: int = 0) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted), to keep padding small. With
    ``shift``, the first batch holds only ``shift`` items, so every batch boundary moves and every
    batch changes its members at the same batch size (how batch-dependence is measured)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    head = [order[:shift]] if 0 < shift < len(order) else []
    rest = order[len(head[0]) :] if head else order
    return head + [rest[i : i + batch_size] for i in range(0, len(rest), batch_size)]


def truncate_response(tokens: Sequence[int] | torch.Tensor, max_new_tokens: int, eos: set[int]) -> list[int]:
    """The response as a user would see it: at most max_new_tokens, ending at the first EOS (kept)."""
    out: list[int] = []
    for token in list(tokens)[:max_new_tokens]:
        out.append(int(token))  # a tensor element is not found in a set of ints: compare as int
        if out[-1] in eos:
            break
    return out


def _text_config(model: PreTrainedModel) -> PreTrainedConfig:
    return model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config


def kv_bytes_per_token(model: PreTrainedModel) -> int | None:
    """Bytes of keys and values one token keeps in the cache (None when the config does not say)."""
    c = _text_config(model)
    heads = getattr(c, "num_attention_heads", None)
    layers, kv_heads = getattr(c, "num_hidden_layers", None), getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or (c.hidden_size // heads if heads else None)
    if not (layers and kv_heads and head_dim):
        return None
    element = embedding_weight(model).element_size()
    per_token: int = 2 * layers * kv_heads * head_dim * element  # the config's sizes are untyped
    return per_token


def _prompt_bytes(model: PreTrainedModel, width: int, length: int) -> float:
    """Memory one prompt of a generation batch needs: its static cache, the prefill's activations
    (hidden states and the MLP's intermediates) and its logits."""
    c = _text_config(model)
    kv = kv_bytes_per_token(model)
    if kv is None:
        return 0.0
    element = embedding_weight(model).element_size()
    hidden, inner = c.hidden_size, getattr(c, "intermediate_size", 4 * c.hidden_size)
    # activations at twice their count: SDPA copies of the key/value heads and the allocator's
    # slack (a 15 GiB-capped Mistral run ran out of memory at the plain estimate and retried at half)
    need: float = kv * length + 2 * width * (4 * hidden + 3 * inner) * element + 8 * c.vocab_size
    return need


def greedy_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: Sequence[int],
    batch_size: int,
    progress: Callable[[int], None] | None = None,
    shift: int = 0,
    budget: MemoryBudget | None = None,
    log: BatchLog | None = None,
) -> list[list[int]]:
    """Greedy responses (token ids) for every prompt, generated in batches with left padding.

    A batch runs to its largest max_new_tokens (or until every row has an EOS); each response is
    then cut to its own limit and at its first EOS (greedy decoding is prefix-consistent, so
    cutting equals stopping early). Batches are as large as ``batch_size`` and the memory allow.
    """
    from transformers import GenerationMixin

    device = model_device(model)
    budget = budget or MemoryBudget(str(device))
    log = log if log is not None else BatchLog()
    eos, pad = eos_token_ids(model, tokenizer), pad_token_id(model, tokenizer)
    responses: list[list[int]] = [[] for _ in prompts]
    widest = max((len(p) for p in prompts), default=0)
    longest = widest + max(max_new_tokens, default=0)
    size = budget.fit(batch_size, _prompt_bytes(model, widest, longest))
    if size < batch_size:
        log.notes.append(
            f"generation: {size} prompts per batch, not {batch_size}, to fit the static cache "
            f"of {longest} tokens in {(budget.free() or 0) / 2**30:.2f} GiB"
        )
    static = supports_static_decoding(model, longest)
    graph = static and can_capture(model)

    def run(batch: list[int]) -> None:
        ids, mask = _left_pad([prompts[i] for i in batch], pad, device)
        steps = max(max_new_tokens[i] for i in batch)
        if static:
            out, how = static_greedy(model, ids, mask, steps, eos, graph)
        else:
            if not isinstance(model, GenerationMixin):
                raise TypeError(f"{type(model).__name__} cannot generate (not a transformers GenerationMixin)")
            with real_tokens(mask):  # the prefill's padding takes no part in LLM.int8's outlier choice
                generated = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=steps,
                    min_new_tokens=0,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    num_beams=1,
                    pad_token_id=pad,
                    eos_token_id=sorted(eos),
                )
            if not isinstance(generated, torch.Tensor):  # a tensor unless a dict output is asked for
                raise TypeError(f"generate returned {type(generated).__name__}, not the token ids")
            out = generated[:, ids.shape[1] :]
            how = "transformers generate (dynamic cache)"
        log.generation_method = how
        rows = out.tolist()
        for row, i in enumerate(batch):
            responses[i] = truncate_response(rows[row], max_new_tokens[i], eos)
        if progress is not None:
            progress(len(batch))

    # Batch by (max_new_tokens, length) so short-answer prompts do not wait for long ones.
    keys = [max_new_tokens[i] * 100_000 + len(p) for i, p in enumerate(prompts)]
    with torch.inference_mode():
        run_batches(length_batches(keys, size, shift), run, budget, log, "generation", "prompts")
    return responses


def response_logits(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    batch_size: int,
    pad: int,
    consume: Callable[[int, torch.Tensor, torch.Tensor], None],
    budget: MemoryBudget | None = None,
    log: BatchLog | None = None,
    stage: str = "scoring",
    equal_lengths: bool = False,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Teacher-forced logits (float32) at every position whose next token is a response token.

    For prompt p (P tokens) and response r (R tokens) the model reads p + r[:-1]; the R positions
    from the last prompt token through the second-to-last response token each predict one response
    token. Calls ``consume(prompt index, logits [R, V], final hidden states [R, H])`` per prompt
    (again for the same prompt if its batch is rerun after running out of memory); prompts with an
    empty response are skipped.
    Rows run longest first; on CUDA the longest runs alone first, to measure how many fit a pass.
    ``equal_lengths``: a pass holds only rows of one length, so every row runs exactly the kernels it
    runs alone (attention reduces over the padded length: float noise of ~1e-7 that LLM.int8's outlier
    threshold and rounding can turn into a different per-prompt KL).
    ``progress`` is told the prompts done after each pass (those with an empty response at once).
    """
    device = model_device(model)
    budget = budget or MemoryBudget(str(device))
    log = log if log is not None else BatchLog()
    vocab = head_weight(model).shape[0]
    todo = [i for i in range(len(prompts)) if responses[i]]
    todo.sort(key=lambda i: (-(len(prompts[i]) + len(responses[i])), i))

    def run(batch: list[int]) -> None:
        rows = [list(prompts[i]) + list(responses[i][:-1]) for i in batch]
        # Right padding and no attention mask: every row's real tokens sit where they sit alone
        # (positions 0..L-1) and causal attention never reaches the padding after them, so a row runs
        # the kernels it runs alone (a padding mask would pick other attention kernels, whose float
        # noise LLM.int8's outlier threshold turns into different numbers).
        ids, mask = _right_pad(rows, pad, device)
        with real_tokens(mask):  # padding takes no part in LLM.int8's outlier choice
            hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
        chunk = max(1, budget.chunk_elements(LOGPROB_ELEMENTS_PER_CHUNK, vocab) // vocab)
        for row, i in enumerate(batch):
            n = len(responses[i])
            start = len(prompts[i]) - 1  # the last prompt token predicts the first response token
            h = hidden[row, start : start + n]
            logits = torch.cat([output_logits(model, h[lo : lo + chunk]).float() for lo in range(0, n, chunk)])
            consume(i, logits, h)
        if progress is not None:
            progress(len(batch))

    if progress is not None and len(todo) < len(prompts):
        progress(len(prompts) - len(todo))
    length = {i: len(prompts[i]) + len(responses[i]) for i in todo}
    same = (lambda a, b: length[a] == length[b]) if equal_lengths else None
    with torch.inference_mode():
        run_sized(todo, batch_size, run, budget, log, stage, "prompts", same_group=same)
