"""The llama.cpp and lm-eval perplexity protocols on real forwards, against plain implementations of
their published definitions (each written here from the source it cites, one sequence at a time,
with the model's own full forward and a float64 log-softmax), and one end-to-end run per protocol.

llama.cpp: tools/perplexity/perplexity.cpp, perplexity(): chunks of n_ctx, BOS first when the
vocabulary adds it, the logits at positions n_ctx/2 .. n_ctx-2 score the next tokens.
lm-eval: lm_eval/utils.py get_rolling_token_windows(context_len=1) + make_disjoint_window, the model
reads context + continuation[:-1] and scores the continuation; tasks/wikitext: word_perplexity =
exp(-sum LL / sum words), bits_per_byte = -sum LL / sum bytes / ln 2, words and bytes of the page.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from integration_support import PASSING_GATES, load_variant, make_project, report, run_suite

from quant_fixtures.compute.scoring import score_windows
from quant_fixtures.inputs.corpus_protocols import (
    adds_bos,
    document_tokens,
    documents_plan,
    joined_plan,
    joined_tokens,
    prefix_token,
)
from quant_fixtures.inputs.wikitext_documents import detokenize, wikitext_pages

pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def tiny(tiny_models: dict[str, Path], digest_cache: Path) -> Any:
    return load_variant(tiny_models["llama"], "fp16", digest_cache, key="tiny-llama").model


@pytest.fixture(scope="module")
def pages(wikitext: Any) -> list[str]:
    return wikitext_pages(wikitext.rows)


def _logp(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)


def test_the_document_level_split(pages: list[str]) -> None:
    """EleutherAI/wikitext_document_level's test split: 62 pages; lm-eval's word and byte counts."""
    assert len(pages) == 62
    assert pages[0].startswith(" = Robert Boulter = \n \n Robert Boulter is an English film")
    assert sum(len(re.split(r"\s+", p)) for p in pages) == 241_335
    assert sum(len(p.encode("utf-8")) for p in pages) == 1_290_527


def test_llama_cpp_protocol_matches_a_plain_llama_perplexity_loop(
    tiny: Any, wikitext: Any, smollm2_tokenizer: Any
) -> None:
    ids, ends = joined_tokens(smollm2_tokenizer, wikitext.text)
    n_ctx, bos = 64, 0  # SmolLM2's tokenizer adds no BOS; force one to exercise the replacement
    assert adds_bos(smollm2_tokenizer) is None
    plan = joined_plan("llama.cpp", ids, ends, wikitext.text, n_ctx, None, 5 * n_ctx, bos)
    ours = score_windows(tiny, plan.ids, plan.windows, batch_size=2)
    nll = count = 0.0
    tokens = ids.tolist()
    for i in range(5):
        chunk = tokens[i * n_ctx : (i + 1) * n_ctx]
        logp = _logp(tiny, [bos] + chunk[1:])
        for j in range(n_ctx // 2, n_ctx - 1):
            nll -= float(logp[j, chunk[j + 1]])
            count += 1
    assert ours.tokens == count == 5 * 31
    assert math.fsum(ours.window_nll) == pytest.approx(nll, rel=1e-6)
    assert plan.scored_bytes > 0 and plan.scored_words > 0


def _plain_rolling_loglikelihood(model: Any, tokens: list[int], prefix: int, max_len: int) -> float:
    """lm-eval's rolling loglikelihood of one document, window by window."""
    windows = [([prefix] + tokens[: min(max_len, len(tokens)) - 1], tokens[: min(max_len, len(tokens))])]
    done = len(windows[0][1])
    while done < len(tokens):
        size = min(len(tokens) - done, max_len)
        windows.append((tokens[done + size - max_len - 1 : done + size - 1], tokens[done : done + size]))
        done += size
    total = 0.0
    for context, continuation in windows:
        context = context[: len(context) - (len(continuation) - 1)]  # make_disjoint_window
        reads = (context + continuation)[:-1]
        logp = _logp(model, reads)
        first = len(reads) - len(continuation)
        total += sum(float(logp[first + k, t]) for k, t in enumerate(continuation))
    return total


def test_lm_eval_protocol_matches_a_plain_rolling_loglikelihood(
    tiny: Any, pages: list[str], smollm2_tokenizer: Any
) -> None:
    texts = [detokenize(p) for p in pages[:2]]
    docs = document_tokens(smollm2_tokenizer, texts)
    budget = len(docs[0]) + len(docs[1])
    prefix = prefix_token(smollm2_tokenizer)
    plan = documents_plan(docs, pages[:2], prefix, 128, budget)
    assert plan.documents == 2
    ours = score_windows(tiny, plan.ids, plan.windows, batch_size=4)
    loglikelihood = sum(_plain_rolling_loglikelihood(tiny, d, prefix, 128) for d in docs)
    assert ours.tokens == budget
    assert -math.fsum(ours.window_nll) == pytest.approx(loglikelihood, rel=1e-6)
    words = sum(len(re.split(r"\s+", p)) for p in pages[:2])
    size = sum(len(p.encode("utf-8")) for p in pages[:2])
    assert (plan.scored_words, plan.scored_bytes) == (words, size)


@pytest.mark.parametrize(
    "protocol,extra",
    [
        ("lm-eval", ("--ctx", "256", "--ppl-max-tokens", "6000")),
        ("llama.cpp", ("--ctx", "64", "--ppl-max-tokens", "512")),
    ],
)
def test_protocol_end_to_end(
    pytester: pytest.Pytester,
    tiny_models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    protocol: str,
    extra: tuple[str, ...],
    pages: list[str],
    smollm2_tokenizer: Any,
) -> None:
    from types import SimpleNamespace

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    e2e = SimpleNamespace(model_dir=tiny_models["llama"], cache=tmp_path / "C")
    make_project(pytester, e2e, PASSING_GATES)
    result = run_suite(
        pytester,
        e2e,
        tmp_path / "R",
        tmp_path / "B",
        "--variants",
        "fp16,nf4",
        "--skip-prompts",
        "--ppl-protocol",
        protocol,
        *extra,
    )
    assert result.ret == 0, "\n".join(result.outlines[-40:] + result.errlines[-20:])
    doc = report(tmp_path / "R", "nf4")
    p = doc["perplexity"]
    assert p["method"] == protocol
    nll = math.fsum(p["window_nll"])
    assert p["bits_per_byte"] == pytest.approx(nll / p["scored_bytes"] / math.log(2), rel=1e-12)
    assert p["word_perplexity"] == pytest.approx(math.exp(nll / p["scored_words"]), rel=1e-12)
    assert p["bits_per_byte_delta"] == pytest.approx(
        p["bits_per_byte"]
        - math.fsum(report(tmp_path / "R", "fp16")["perplexity"]["window_nll"]) / p["scored_bytes"] / math.log(2),
        rel=1e-9,
        abs=1e-12,
    )
    if protocol == "lm-eval":  # whole documents while they fit 6000 tokens
        lengths = [len(d) for d in document_tokens(smollm2_tokenizer, [detokenize(x) for x in pages[:5]])]
        fit = next(i for i in range(1, 6) if sum(lengths[:i]) > 6000) - 1
        assert fit >= 1 and p["documents"] == fit and p["tokens"] == sum(lengths[:fit])
        assert p["scored_words"] == sum(len(re.split(r"\s+", x)) for x in pages[:fit])
    else:  # 512 tokens: 8 chunks of 64, 31 scored each
        assert p["windows"] == 8 and p["tokens"] == 8 * 31 and p["documents"] is None
    assert doc["corpus_kl"]["tokens"] == p["tokens"]
    floor = doc["corpus_kl"]["noise_floor"]  # FP16 against itself over the first windows, another batch size
    first = sum(p["window_tokens"][: min(8, -(-len(p["window_tokens"]) // 4))])  # 8, or a quarter of the pass
    assert floor["positions"] == first and 0.0 <= floor["mean"] <= floor["max"] < 1e-3
