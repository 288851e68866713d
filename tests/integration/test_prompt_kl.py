"""Per-prompt and corpus KL of NF4 against FP16 on the real SmolLM2-135M-Instruct (CPU, float32 compute).

Every library number is checked against a plain computation written here: one prompt at a time,
the model's own full forward (`model(input_ids=...).logits`, no padding, no chunking), softmax over
the whole vocabulary in float64.

Tolerances, and why they hold:
* top-k(256) + tail bucket vs exact KL, per prompt mean, 1e-3 relative: the bucket is a lower bound
  whose gap is the divergence *inside* the FP16 tail, small when the top-256 hold almost all mass.
* library vs the plain top-k + tail computation, per prompt mean, 1e-4 relative: the same formula;
  only float32 logits of a padded batch differ from float32 logits of a lone unpadded forward.
* batched (6) vs one-at-a-time (1) scoring: 1e-4 nats ABSOLUTE per position (and identical top-1).
* corpus KL (top-32 + tail bucket): mean token KL within 1e-5 relative of the plain computation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import quant_fixtures.evaluation as evaluation
from integration_support import SMOLLM2_GGUF, SMOLLM2_PACKAGE
from quant_fixtures.config import ModelSpec
from quant_fixtures.corpus_kl import KLAgainstReference, TopkRecorder
from quant_fixtures.data import load_wikitext2_test
from quant_fixtures.evaluation import score_windows
from quant_fixtures.generation import greedy_generate
from quant_fixtures.gguf import convert_gguf_package
from quant_fixtures.metrics.divergence import METRICS_VERSION
from quant_fixtures.metrics.perplexity import nonoverlapping_windows
from quant_fixtures.models import load_model, resolve_model
from quant_fixtures.prompt_eval import compute_reference, score_against_reference
from quant_fixtures.prompts import CATEGORIES, load_prompt_suite
from quant_fixtures.reference import ReferenceKey
from quant_fixtures.variants import VARIANTS, VariantOptions

GGUF_CACHE = Path.home() / ".cache" / "quant_fixtures" / "gguf"  # reuses the converted copy when valid
TOP_K = 256
CAP = 12
CORPUS_K = 32
CORPUS_CTX = 256

PROMPTS = [
    {"id": "math-add", "category": "mathematical_reasoning", "max_new_tokens": 6, "answer": "12",
     "prompt": "What is 7 + 5? Reply with the number only."},
    {"id": "math-cows", "category": "mathematical_reasoning", "answer": {"regex": r"\b12\b"},
     "prompt": "A farmer has 3 fields with 4 cows in each field. How many cows does the farmer have in total? "
               "Explain briefly."},
    {"id": "qa-capital", "category": "question_answering", "max_new_tokens": 8, "answer": "Paris",
     "prompt": "What is the capital of France?"},
    {"id": "qa-ocean", "category": "question_answering",
     "prompt": "Which ocean is the largest on Earth, and roughly how much of the planet's surface does it cover?"},
    {"id": "sci-ice", "category": "scientific_knowledge", "max_new_tokens": 10,
     "prompt": "Why does ice float on water?"},
    {"id": "sci-photo", "category": "scientific_knowledge", "answer": "oxygen",
     "prompt": "In one sentence, explain what photosynthesis produces from sunlight, water and carbon dioxide."},
]

MEASURED: dict[str, float] = {}


def _report(name: str, value: float) -> None:
    MEASURED[name] = value
    print(f"\n[measured] {name} = {value:.3e}")


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """FP16 and NF4 SmolLM2, both held at once (float16 weights as stored, float32 compute)."""
    directory = convert_gguf_package(SMOLLM2_PACKAGE, SMOLLM2_GGUF, GGUF_CACHE).directory
    spec = ModelSpec(key="smol", path=str(directory))
    resolved = resolve_model(spec, tmp_path_factory.mktemp("prompt-kl-cache"))
    options = VariantOptions(weight_dtype="float16", compute_dtype="float32")
    loaded = {v: load_model(spec, resolved, VARIANTS[v], options, "cpu") for v in ("fp16", "nf4")}
    return {"fp16": loaded["fp16"].model, "nf4": loaded["nf4"].model, "tok": loaded["fp16"].tokenizer,
            "identity": resolved.identity}


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    path = tmp_path_factory.mktemp("prompt-kl-suite") / "suite.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS), encoding="utf-8")
    loaded = load_prompt_suite(path)
    assert [p.id for p in loaded] == [p["id"] for p in PROMPTS]
    assert all(p.category in CATEGORIES for p in loaded)
    assert sum(p.answer is not None for p in loaded) >= 2
    return loaded


@pytest.fixture(scope="module")
def key(smol: dict[str, Any]) -> ReferenceKey:
    return ReferenceKey(model="smollm2-test", weights_identity=smol["identity"], tokenizer_sha256="test-tokenizer",
                        prompts_sha256="test-prompts", categories=None, use_chat_template=True,
                        max_new_tokens_cap=CAP, top_k=TOP_K, weight_dtype="float16", compute_dtype="float32",
                        device_type="cpu", metrics_version=METRICS_VERSION)


@pytest.fixture(scope="module")
def reference(smol: dict[str, Any], prompts: list[Any], key: ReferenceKey) -> Any:
    return compute_reference(smol["fp16"], smol["tok"], prompts, key, gen_batch=3, score_batch=3)


@pytest.fixture(scope="module")
def nf4_scores(smol: dict[str, Any], reference: Any) -> list[Any]:
    return score_against_reference(smol["nf4"], smol["tok"], reference, batch_size=3)


@pytest.fixture(scope="module")
def plain(smol: dict[str, Any], prompts: list[Any], reference: Any) -> list[dict[str, Any]]:
    """Per prompt, one at a time: float64 log-probs of both models at the response positions.

    Input = prompt ids + FP16 response[:-1]; the positions from the last prompt token on each
    predict one response token. Prompt ids come straight from the tokenizer's chat template.
    """
    tok = smol["tok"]
    out = []
    for p, response in zip(prompts, reference.response_ids):
        prompt_ids = list(tok.apply_chat_template([{"role": "user", "content": p.prompt}], tokenize=True,
                                                  add_generation_prompt=True, return_dict=True)["input_ids"])
        ids = torch.tensor([prompt_ids + list(response[:-1])], dtype=torch.long)
        first = len(prompt_ids) - 1
        with torch.inference_mode():
            fp16 = smol["fp16"](input_ids=ids).logits[0, first:].to(torch.float64)
            nf4 = smol["nf4"](input_ids=ids).logits[0, first:].to(torch.float64)
        assert fp16.shape[0] == len(response)
        out.append({"prompt_ids": prompt_ids, "response": list(response),
                    "logp": torch.log_softmax(fp16, -1), "logq": torch.log_softmax(nf4, -1)})
    return out


# --- plain float64 maths -------------------------------------------------------------------------


def exact_kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """sum_v p_v (log p_v - log q_v) over the full vocabulary, per position (float64)."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def topk_tail_kl(logp: torch.Tensor, logq: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """KL over P's top-k tokens plus one bucket for the rest (float64), and P's top-1 index."""
    top_logp, idx = logp.topk(k, dim=-1)
    top_logq = logq.gather(-1, idx)
    head = (top_logp.exp() * (top_logp - top_logq)).sum(-1)
    outside = torch.ones_like(logp, dtype=torch.bool).scatter(-1, idx, False)
    logp_tail = logp.masked_fill(~outside, float("-inf")).logsumexp(-1)
    logq_tail = logq.masked_fill(~outside, float("-inf")).logsumexp(-1)
    return head + logp_tail.exp() * (logp_tail - logq_tail), idx[:, 0]


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# --- a. per-prompt KL against exact and plain computations ---------------------------------------


def test_reference_prompts_and_greedy_responses(prompts, reference, plain, smol):
    eos = smol["fp16"].generation_config.eos_token_id
    for p, ref_prompt, ref_resp, mine in zip(prompts, reference.prompt_ids, reference.response_ids, plain):
        assert ref_prompt == mine["prompt_ids"], p.id
        limit = min(p.max_new_tokens, CAP)
        assert 1 <= len(ref_resp) <= limit, p.id
        assert eos not in ref_resp[:-1], p.id  # cut at the first EOS, which is kept
        assert len(ref_resp) == limit or ref_resp[-1] == eos, p.id
        # Greedy: each response token is the FP16 argmax of the unpadded teacher-forced forward.
        assert mine["logp"].argmax(-1).tolist() == ref_resp, p.id
    assert any(r[-1] == eos for r in reference.response_ids)  # at least one response ends in EOS
    # The stored top-k is FP16's own: same top-1 and log-probs as the plain forward (float32 accuracy).
    for logp, idx, mine in zip(reference.topk_logp, reference.topk_idx, plain):
        assert logp.shape == idx.shape == (len(mine["response"]), TOP_K)
        want = mine["logp"].topk(TOP_K, -1).values
        torch.testing.assert_close(logp.double(), want, rtol=0, atol=1e-4)
        assert idx[:, 0].tolist() == mine["response"]


def test_prompt_kl_matches_exact_and_plain_topk(reference, nf4_scores, plain):
    worst_vs_exact = worst_vs_plain = 0.0
    for score, mine in zip(nf4_scores, plain):
        exact = exact_kl(mine["logp"], mine["logq"])
        topk, _ = topk_tail_kl(mine["logp"], mine["logq"], TOP_K)
        # Log-sum inequality: the bucketed estimate never exceeds the exact KL.
        assert torch.all(topk <= exact + 1e-9), (topk - exact).max()
        assert len(score.kl) == len(mine["response"])
        lib = float(np.mean(score.kl))
        worst_vs_exact = max(worst_vs_exact, rel(lib, float(exact.mean())))
        worst_vs_plain = max(worst_vs_plain, rel(lib, float(topk.mean())))
        assert lib == pytest.approx(float(exact.mean()), rel=1e-3)
        assert lib == pytest.approx(float(topk.mean()), rel=1e-4)
        assert float(exact.mean()) > 0  # NF4 really changed the model
    _report("max rel |library top-k KL - exact KL| (per-prompt mean)", worst_vs_exact)
    _report("max rel |library top-k KL - plain top-k KL| (per-prompt mean)", worst_vs_plain)


def test_top1_nll_and_tail_match_plain(nf4_scores, plain):
    worst_nll = 0.0
    for score, mine in zip(nf4_scores, plain):
        response = torch.tensor(mine["response"])
        top1 = (mine["logq"].argmax(-1) == mine["logp"].argmax(-1)).numpy()
        np.testing.assert_array_equal(score.top1, top1)
        nll = -mine["logq"].gather(-1, response[:, None])[:, 0].numpy()
        np.testing.assert_allclose(score.nll, nll, rtol=1e-4, atol=1e-4)
        assert float(score.nll.sum()) == pytest.approx(float(nll.sum()), rel=1e-4)
        worst_nll = max(worst_nll, float(np.abs(score.nll - nll).max()))
        tail = 1.0 - mine["logp"].topk(TOP_K, -1).values.exp().sum(-1)
        np.testing.assert_allclose(score.tail, tail.clamp_min(0).numpy(), rtol=0, atol=1e-5)
    _report("max abs |library NLL - plain NLL| (nats)", worst_nll)


# --- b. batch composition does not matter --------------------------------------------------------


@pytest.mark.parametrize("variant", ["fp16", "nf4"])
def test_greedy_batched_equals_one_at_a_time(smol, prompts, reference, variant):
    limits = [min(p.max_new_tokens, CAP) for p in prompts]
    batched = greedy_generate(smol[variant], smol["tok"], reference.prompt_ids, limits, batch_size=6)
    single = greedy_generate(smol[variant], smol["tok"], reference.prompt_ids, limits, batch_size=1)
    assert batched == single
    if variant == "fp16":
        assert batched == reference.response_ids  # and the reference itself was made with batch 3


def test_scoring_batched_equals_one_at_a_time(smol, reference, nf4_scores):
    """Per position: KL and NLL within 1e-4 nats ABSOLUTE, identical top-1 agreement."""
    batched = score_against_reference(smol["nf4"], smol["tok"], reference, batch_size=6)
    single = score_against_reference(smol["nf4"], smol["tok"], reference, batch_size=1)
    worst_abs = worst_rel = 0.0
    for b, s, three in zip(batched, single, nf4_scores):
        assert len(b.kl) == len(s.kl) == len(three.kl) > 0
        np.testing.assert_allclose(b.kl, s.kl, rtol=0, atol=1e-4)
        np.testing.assert_allclose(three.kl, s.kl, rtol=0, atol=1e-4)
        np.testing.assert_allclose(b.nll, s.nll, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(b.top1, s.top1)
        np.testing.assert_array_equal(three.top1, s.top1)
        worst_abs = max(worst_abs, float(np.abs(b.kl - s.kl).max()))
        worst_rel = max(worst_rel, rel(float(b.kl.mean()), float(s.kl.mean())))
    _report("max abs per-position |KL batch 6 - KL batch 1| (nats)", worst_abs)
    _report("max rel per-prompt-mean |KL batch 6 - KL batch 1|", worst_rel)


# --- c. FP16 against itself ----------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 6])
def test_fp16_against_itself_is_zero(smol, reference, batch_size):
    scores = score_against_reference(smol["fp16"], smol["tok"], reference, batch_size=batch_size)
    worst = 0.0
    for score, logp, resp in zip(scores, reference.topk_logp, reference.response_ids):
        assert len(score.kl) == len(resp)
        assert float(score.kl.max()) < 1e-6
        assert score.top1.all()
        # The response token is FP16's top-1, so its NLL is minus the stored top-1 log-prob.
        np.testing.assert_allclose(score.nll, -logp[:, 0].double().numpy(), rtol=0, atol=1e-4)
        worst = max(worst, float(score.kl.max()))
    _report(f"max FP16-vs-FP16 per-position KL, batch {batch_size} (nats)", worst)


# --- d. corpus KL hooks --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_ids(smol: dict[str, Any]) -> torch.Tensor:
    text = load_wikitext2_test("vendored").text[:20_000]
    ids = torch.tensor(smol["tok"](text)["input_ids"], dtype=torch.long)
    assert ids.numel() >= 2 * CORPUS_CTX
    return ids


def plain_corpus(smol: dict[str, Any], ids: torch.Tensor, windows: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per scored position, window after window: top-32 + tail KL (float64) and same-top-1."""
    kls, same = [], []
    for w in windows:
        inputs = ids[w.begin:w.end][None]
        first = w.first_target - w.begin - 1  # position predicting the first target
        with torch.inference_mode():
            logp = torch.log_softmax(smol["fp16"](input_ids=inputs).logits[0, first:-1].double(), -1)
            logq = torch.log_softmax(smol["nf4"](input_ids=inputs).logits[0, first:-1].double(), -1)
        kl, top1 = topk_tail_kl(logp, logq, CORPUS_K)
        assert torch.all(kl <= exact_kl(logp, logq) + 1e-9)
        kls.append(kl.numpy())
        same.append((logq.argmax(-1) == top1).numpy())
    return np.concatenate(kls), np.concatenate(same)


@pytest.mark.parametrize("nf4_batch", [2, 1])
def test_corpus_kl_hooks_match_plain(smol, corpus_ids, monkeypatch, nf4_batch):
    vocab = smol["fp16"].get_output_embeddings().weight.shape[0]
    # 40 positions per chunk for a batch of 2 windows (80 for one): each window spans several chunks.
    monkeypatch.setattr(evaluation, "LOGPROB_ELEMENTS_PER_CHUNK", 2 * vocab * 40)
    windows = nonoverlapping_windows(corpus_ids.numel(), CORPUS_CTX, max_tokens=2 * CORPUS_CTX)
    assert len(windows) == 2
    window_tokens = [w.scored for w in windows]

    recorder = TopkRecorder(len(windows), k=CORPUS_K)
    calls: list[int] = []

    def fp16_hook(batch, targets, logp, mask):
        calls.append(int(mask.sum()))
        recorder(batch, targets, logp, mask)

    score_windows(smol["fp16"], corpus_ids, windows, batch_size=2, hook=fp16_hook)
    assert len(calls) == 7 and sum(calls) == sum(window_tokens)  # 255 positions in chunks of 40
    tensors = recorder.tensors()
    assert tensors["logp"].shape == tensors["idx"].shape == (sum(window_tokens), CORPUS_K)

    hook = KLAgainstReference(tensors, window_tokens)
    score_windows(smol["nf4"], corpus_ids, windows, batch_size=nf4_batch, hook=hook)
    result = hook.acc.result()

    kl, same = plain_corpus(smol, corpus_ids, windows)
    assert result["tokens"] == kl.size == sum(window_tokens)
    assert result["nonfinite"] == 0
    assert result["mean"] == pytest.approx(float(kl.mean()), rel=1e-5)
    assert result["same_top1_rate"] == float(same.mean())
    assert result["max"] == pytest.approx(float(kl.max()), rel=1e-4)
    assert hook.cursor == hook.end  # every reference row consumed exactly once
    _report(f"corpus KL rel |library mean - plain mean| (nf4 batch {nf4_batch})", rel(result["mean"], float(kl.mean())))
