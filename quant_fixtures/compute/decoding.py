"""Greedy decoding of a left-padded batch with a static KV cache; on CUDA the decode step is
captured once as a CUDA graph and replayed, so a step costs GPU time only, not Python and kernel
launches (about 80 ms a step through ``model.generate`` on the H200 host, shared/DEVICE.md).

The cache, the attention mask and every input of a step live in fixed buffers; the step itself
writes its token, opens the next cache slot in the mask and advances positions, so the host only
replays. LLM.int8 layers take their static-shape path there (models/int8_static.py), checked after
the prefill and at each EOS check: a batch whose outlier columns overflowed it stops there and runs
again at a width that holds them, and after ``STATIC_TRIES`` tries eagerly on the exact path. Where a
kernel cannot be captured the same step runs eagerly. The tokens are those of ``model.generate``'s
greedy search: same model calls, masks with the same allowed keys (tested against it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch

from quant_fixtures.compute.grouped_attention import grouped_attention_for
from quant_fixtures.compute.scoring import embedding_weight, output_logits
from quant_fixtures.models.int8_per_sequence import has_batch_dependent_int8, real_tokens, static_int8_applies
from quant_fixtures.models.int8_static import OverflowGuard, static_outlier_columns, wider_columns

if TYPE_CHECKING:
    from transformers import PreTrainedModel

EOS_CHECK_EVERY = 16  # decode steps between checks whether every row has finished (one host sync)
# Static LLM.int8 tries per batch (the default width, then wider ones) before the exact eager path.
STATIC_TRIES = 3


def _cache_kwarg(model: PreTrainedModel) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` in 5.2x; take whichever the decoder has."""
    params = inspect.signature(model.base_model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def supports_static_decoding(model: PreTrainedModel, length: int) -> bool:
    """Whether the static path computes what ``generate`` would: a decoder that takes a cache and a
    4D mask, and no sliding window shorter than the sequence (the mask here is fully causal)."""
    model_config = model.config
    window = getattr(model_config, "sliding_window", None)
    if window is not None and getattr(model_config, "use_sliding_window", True) is not False and length > window:
        return False
    params = inspect.signature(model.base_model.forward).parameters
    return ("cache" in params or "past_key_values" in params) and bool(getattr(model, "_supports_static_cache", True))


def can_capture(model: torch.nn.Module) -> bool:
    """CUDA graphs need static shapes and no host sync: LLM.int8 layers only with per-sequence
    columns, which take the static path while decoding (bitsandbytes' own find columns by shape)."""
    devices = {p.device for p in model.parameters()}
    if len(devices) != 1 or next(iter(devices)).type != "cuda":  # one graph per GPU: not for a spread model
        return False
    return not has_batch_dependent_int8(model)


class StaticGreedyBatch:
    """One batch: ``ids``/``mask`` [B, W] left-padded prompts, ``steps`` new tokens per row."""

    def __init__(
        self, model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, steps: int, eos: set[int]
    ) -> None:
        from transformers import StaticCache

        self.model, self.steps, self.eos = model, steps, sorted(eos)
        batch, width = ids.shape
        self.width, self.length = width, width + steps
        self.cache = StaticCache(config=model.config, max_cache_len=self.length)
        self.cache_kwarg = _cache_kwarg(model)
        dtype = embedding_weight(model).dtype
        if not dtype.is_floating_point:
            dtype = torch.float16
        device = ids.device
        valid = torch.ones(batch, self.length, dtype=torch.bool, device=device)
        valid[:, :width] = mask.bool()
        self.blocked = torch.finfo(dtype).min  # not -inf: a padding row attends nowhere and must stay finite
        keys = torch.arange(self.length, device=device)
        # Prefill: query i sees real keys j <= i. Decode: slots open one by one (the step does it).
        causal = keys.view(1, 1, -1) <= torch.arange(width, device=device).view(1, -1, 1)
        allowed = valid.view(batch, 1, self.length) & causal
        self.prefill_mask = torch.zeros(batch, 1, width, self.length, dtype=dtype, device=device)
        self.prefill_mask.masked_fill_(~allowed.unsqueeze(1), self.blocked)
        self.step_mask = torch.full((batch, 1, 1, self.length), self.blocked, dtype=dtype, device=device)
        self.step_mask[:, 0, 0, :width].masked_fill_(mask.bool(), 0.0)
        self.ids, self.real, self.positions = ids, mask.bool(), (mask.cumsum(-1) - 1).clamp(min=0)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.position = self.positions[:, -1:].clone()
        self.slot = torch.tensor([width], dtype=torch.long, device=device)  # cache slot of the next token
        self.out = torch.zeros(batch, steps, dtype=torch.long, device=device)
        self.column = torch.zeros(1, dtype=torch.long, device=device)  # where the step writes in ``out``

    def _next_token(self, hidden: torch.Tensor) -> torch.Tensor:
        return output_logits(self.model, hidden[:, -1]).argmax(-1, keepdim=True)

    def prefill(self) -> None:
        with real_tokens(self.real):  # padding takes no part in LLM.int8's outlier choice
            hidden = self.model.base_model(
                input_ids=self.ids,
                attention_mask=self.prefill_mask,
                position_ids=self.positions,
                use_cache=True,
                **{self.cache_kwarg: self.cache},
            ).last_hidden_state
        self.token.copy_(self._next_token(hidden))
        self.out[:, :1].copy_(self.token)
        self.column += 1

    def step(self) -> None:
        """Feed the last token, store the next: every input and output is a fixed buffer."""
        self.step_mask.index_fill_(3, self.slot, 0.0)
        self.position += 1
        with grouped_attention_for(self.model):  # no copies of the key/value heads (grouped_attention.py)
            hidden = self.model.base_model(
                input_ids=self.token,
                attention_mask=self.step_mask,
                position_ids=self.position,
                use_cache=True,
                **{self.cache_kwarg: self.cache},
            ).last_hidden_state
        self.token.copy_(self._next_token(hidden))
        self.out.index_copy_(1, self.column, self.token)
        self.column += 1
        self.slot += 1

    def finished(self, done: int) -> bool:
        """Whether every row has produced an EOS within its first ``done`` tokens."""
        if not self.eos:
            return False
        hit = torch.isin(self.out[:, :done], torch.tensor(self.eos, device=self.out.device))
        return bool(hit.any(-1).all())


def static_greedy(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, steps: int, eos: set[int], use_graph: bool
) -> tuple[torch.Tensor, str]:
    """Greedy tokens [B, steps] (rows past their EOS hold what greedy search would have gone on
    with: callers cut at the first EOS) and how the steps ran ("cuda graph" or "eager"). LLM.int8
    layers run their static path (on CUDA). A batch that overflowed its width is decoded again at a
    width that holds the widest union seen (int8_static.wider_columns), up to ``STATIC_TRIES`` tries
    in all and ``MAX_STATIC_COLUMNS`` wide, then exactly on the dynamic path; ``how`` names the widths."""
    if not static_int8_applies(model, ids.device):
        return _greedy(model, ids, mask, steps, eos, use_graph, None)
    guard, tried = OverflowGuard(ids.device), []
    while True:
        tried.append(guard.columns)
        try:
            out, how = _greedy(model, ids, mask, steps, eos, use_graph, guard)
        except torch.OutOfMemoryError:
            if len(tried) == 1:
                raise  # the batch itself does not fit: the caller's batch sizing decides
            return _exact(model, ids, mask, steps, eos, f"width {guard.columns} ran out of memory")
        if not guard.overflowed():
            if len(tried) > 1:
                how += f" (LLM.int8 static path at {guard.columns} float columns; {_widths(tried[:-1])} overflowed)"
            return out, how
        wider = wider_columns(guard) if len(tried) < STATIC_TRIES else None
        if wider is None:
            return _exact(model, ids, mask, steps, eos, f"outlier columns past the static path's {_widths(tried)}")
        guard = OverflowGuard(ids.device, wider)


def _exact(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, steps: int, eos: set[int], why: str
) -> tuple[torch.Tensor, str]:
    if ids.device.type == "cuda":
        torch.cuda.empty_cache()  # what the failed static try held
    out, how = _greedy(model, ids, mask, steps, eos, False, None)
    return out, f"{how} (LLM.int8 {why}: exact path)"


def _widths(columns: list[int]) -> str:
    return "width " + ", ".join(str(c) for c in columns)


def _greedy(
    model: PreTrainedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    steps: int,
    eos: set[int],
    use_graph: bool,
    guard: OverflowGuard | None,
) -> tuple[torch.Tensor, str]:
    run = StaticGreedyBatch(model, ids, mask, steps, eos)
    on_device = torch.cuda.device(ids.device) if ids.device.type == "cuda" else nullcontext()
    # graphs and side streams belong to the model's GPU
    with torch.inference_mode(), on_device, static_outlier_columns(guard):
        run.prefill()
        done, graph, how = 1, None, "eager"
        if guard is not None and guard.overflowed():  # the prompts alone overflowed: no step can hold
            return run.out[:, :done], how
        warmup = 2  # eager steps before capture (kernels pick their workspaces, lazy inits run)
        while done < steps:
            # one synchronisation every EOS_CHECK_EVERY steps; an overflowed try stops there, as its
            # tokens are thrown away (the guard's flag never clears, so the verdict is the same)
            if done % EOS_CHECK_EVERY == 0 and (run.finished(done) or (guard is not None and guard.overflowed())):
                break
            if graph is not None:
                graph.replay()
            elif use_graph and done > warmup and steps - done > 2:
                try:
                    graph, how = _capture(run), "cuda graph"
                except RuntimeError as exc:  # a kernel that cannot be captured: the same step, eagerly
                    use_graph, how = False, f"eager (CUDA graph capture failed: {str(exc).splitlines()[0][:120]})"
                continue  # a capture records the step without running it
            elif use_graph and done <= warmup:
                _on_side_stream(run.step, run.out.device)
            else:
                run.step()
            done += 1
    return run.out[:, :done], how


_SIDE_STREAMS: dict[int, torch.cuda.Stream] = {}


def side_stream(device: torch.device) -> torch.cuda.Stream:
    """The one stream of ``device`` that every warm-up step and capture runs on, for the process.
    cuBLAS keeps a workspace (32 MiB on Hopper) for every stream it has run on until the process
    ends, so a new stream per batch held 32 MiB more after each batch: Mistral-7B under the 15 GiB
    cap carried 0.69 GiB of them (22 streams) into the long-context stage and ran out of memory
    there (H100, 2026-12-05). Made on ``device`` itself: torch.cuda.graph's own default stream is
    made once per process on whichever device was current then (a pytest-xdist worker on cuda:1
    that later captured for cuda:0 replayed graphs that wrote nothing)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SIDE_STREAMS:
        _SIDE_STREAMS[index] = torch.cuda.Stream(device=index)
    return _SIDE_STREAMS[index]


def _on_side_stream(fn: Callable[[], None], device: torch.device) -> None:
    # Warm-up runs where the capture will: the capture then finds the stream's cuBLAS workspace made.
    stream = side_stream(device)
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)


def _capture(run: StaticGreedyBatch) -> torch.cuda.CUDAGraph:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side_stream(run.out.device)):
        run.step()
    return graph
