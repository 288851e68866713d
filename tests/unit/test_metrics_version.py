"""What METRICS_VERSION protects. It is part of the key of every stored FP16 reference (the
perplexity baseline, the prompt reference): bumped when the maths of a metric change, so references
stored with the old maths are recomputed, never compared with numbers of the new maths.

Two halves make that hold: the maths are pinned here per version (changing them without a bump
fails, naming what moved), and the keys the session builds carry the version (a reference stored
under another version is not used)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import pytest
import torch

from quant_fixtures.compute.scoring import score_windows
from quant_fixtures.metrics.divergence import (
    METRICS_VERSION,
    kl_exact,
    kl_topk,
    nll_of_targets,
    tail_mass,
    top1_agree,
    topk_reference,
)
from quant_fixtures.metrics.perplexity import nonoverlapping_windows, perplexity, strided_windows
from quant_fixtures.session import references
from quant_fixtures.store.baseline import Baseline, load_baseline, store_baseline

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from quant_fixtures.session.model_facts import ModelUnderTest

# The numbers of each metric on the fixed inputs below, per METRICS_VERSION. Float64 maths are
# compared to 1e-9 (relative), what runs in float32 or float16 on the way to 1e-5.
FINGERPRINTS: dict[int, dict[str, list[float]]] = {
    1: {
        "kl_exact": [
            0.04211525794372306,
            0.03368828049351222,
            0.028787711969512006,
            0.025520759355613452,
            0.03529900819010841,
            0.028894332216463307,
        ],
        "kl_exact_float16": [
            0.04224157560383901,
            0.03365820200269809,
            0.028816210840886924,
            0.02551967794488519,
            0.035377527705350076,
            0.028798104642191902,
        ],
        "kl_topk": [
            0.04124231768052733,
            0.029663380739597213,
            0.027722720607904386,
            0.02432927523851196,
            0.033737565314130365,
            0.02002543339851628,
        ],
        "tail_mass": [
            0.1039226310607747,
            0.15432866994233496,
            0.09517881077636103,
            0.04385232827702479,
            0.0749237807564368,
            0.17389512493954085,
        ],
        "nll_of_targets": [
            3.4819255909325157,
            7.429508703421915,
            5.5200201739631645,
            2.108888497422756,
            5.157302832487309,
            3.0077681048162885,
        ],
        "top1_agree": [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        "perplexity": [4.557009817542661],
        "windows": [
            0,
            8,
            1,
            8,
            16,
            9,
            16,
            24,
            17,
            24,
            32,
            25,
            0,
            8,
            1,
            3,
            11,
            8,
            6,
            14,
            11,
            9,
            17,
            14,
            12,
            20,
            17,
            15,
            23,
            20,
            18,
            26,
            23,
            21,
            29,
            26,
            24,
            32,
            29,
            27,
            35,
            32,
            30,
            38,
            35,
            33,
            40,
            38,
        ],
        "window_nll_nonoverlapping": [46.82479214668274, 45.95453596115112, 26.15518319606781, 21.22788095474243],
        "window_nll_strided": [
            46.82479214668274,
            9.095303773880005,
            18.923928022384644,
            21.313764214515686,
            7.051723122596741,
            9.015076041221619,
            22.5097074508667,
            8.466055989265442,
            6.113766074180603,
            14.989879250526428,
            13.96411395072937,
            12.669580459594727,
        ],
    },
}
LOOSE = {"kl_exact_float16", "kl_topk", "tail_mass", "window_nll_nonoverlapping", "window_nll_strided"}


def _wave(
    n: int, step: float, f: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    return f(torch.arange(n, dtype=dtype) * step)


class _Decoder(torch.nn.Module):
    def __init__(self, embed: torch.nn.Embedding) -> None:
        super().__init__()
        self.embed = embed

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
        states = self.embed(input_ids)
        positions = torch.arange(1, input_ids.shape[1] + 1, dtype=states.dtype).view(1, -1, 1)
        return SimpleNamespace(last_hidden_state=torch.tanh(states + states.cumsum(1) / positions))


class _TinyLM(torch.nn.Module):
    """The parts of a causal LM that score_windows reads, with weights from sin/cos (no random
    numbers: the fingerprint must be the same on every machine)."""

    def __init__(self, vocab: int = 13, width: int = 6) -> None:
        super().__init__()
        embed = torch.nn.Embedding(vocab, width)
        embed.weight.data = _wave(vocab * width, 0.37, torch.sin, torch.float32).reshape(vocab, width)
        self.head = torch.nn.Linear(width, vocab, bias=False)
        self.head.weight.data = 2 * _wave(vocab * width, 0.53, torch.cos, torch.float32).reshape(vocab, width)
        self.base_model = _Decoder(embed)
        self.config = SimpleNamespace(final_logit_softcapping=None)

    def get_output_embeddings(self) -> torch.nn.Linear:
        return self.head


def fingerprint() -> dict[str, list[float]]:
    ref = 3 * _wave(66, 0.7, torch.sin).reshape(6, 11)
    cand = ref + 0.4 * _wave(66, 1.3, torch.cos).reshape(6, 11)
    logp, idx = topk_reference(ref, 4)
    ids = (torch.arange(40) * 7 + torch.arange(40) // 3) % 13
    plain = nonoverlapping_windows(len(ids), 8, 32)
    strided = strided_windows(len(ids), 8, 3)
    model = cast("PreTrainedModel", _TinyLM())  # a stand-in with the parts score_windows reads
    return {
        "kl_exact": kl_exact(ref, cand).tolist(),
        "kl_exact_float16": kl_exact(ref.half(), cand.half()).tolist(),
        "kl_topk": kl_topk(logp, idx, cand).tolist(),
        "tail_mass": tail_mass(logp).tolist(),
        "nll_of_targets": nll_of_targets(cand, torch.arange(6) * 5 % 11).tolist(),
        "top1_agree": top1_agree(ref, cand).double().tolist(),
        "perplexity": [perplexity([10.5, 12.25], [7, 8])],
        # Which tokens a protocol scores: (begin, end, first target) of every window.
        "windows": [x for w in plain + strided for x in (w.begin, w.end, w.first_target)],
        "window_nll_nonoverlapping": score_windows(model, ids, plain, batch_size=2).window_nll,
        "window_nll_strided": score_windows(model, ids, strided, batch_size=3).window_nll,
    }


def test_the_metric_maths_are_those_of_the_metrics_version() -> None:
    assert METRICS_VERSION in FINGERPRINTS, (
        f"METRICS_VERSION is {METRICS_VERSION}: record the new maths' fingerprint() in FINGERPRINTS"
    )
    expected, measured = FINGERPRINTS[METRICS_VERSION], fingerprint()
    assert set(measured) == set(expected)
    moved = [
        name
        for name, values in measured.items()
        if values != pytest.approx(expected[name], rel=1e-5 if name in LOOSE else 1e-9, abs=1e-12)
    ]
    assert not moved, (
        f"the maths of {moved} changed under METRICS_VERSION {METRICS_VERSION}: bump it (metrics/divergence.py, "
        "with a line saying what changed) so stored FP16 references are recomputed, and record the new "
        "fingerprint() here"
    )


def _reference_store(tmp_path: Path) -> references.ReferenceStore:
    """The session's reference store over stand-in inputs and settings: only what its keys read."""
    from quant_fixtures.session.references import ReferenceStore

    corpus_text = SimpleNamespace(text=lambda: SimpleNamespace(sha256="f" * 64))
    prompt_suite = SimpleNamespace(sha256=lambda: "b" * 64)
    environment = SimpleNamespace(numerics=lambda: {"device_type": "cpu", "torch": "2.13.0"})
    settings = SimpleNamespace(
        perplexity=SimpleNamespace(protocol="nonoverlapping", stride=None, max_tokens=2048),
        prompts=SimpleNamespace(categories=None, use_chat_template=True, max_new_tokens_cap=16, top_k=256),
        load=SimpleNamespace(weight_dtype="float16", compute_dtype="float32", device_type="cpu"),
        paths=SimpleNamespace(baselines_dir=tmp_path, cache_dir=tmp_path / "cache"),
    )
    # stand-ins of what the keys read
    return ReferenceStore(settings, corpus_text, prompt_suite, environment)  # type: ignore[arg-type]


# The model as an evaluation resolves it: only what the keys read.
TINY = cast(
    "ModelUnderTest",
    SimpleNamespace(key="tiny", resolved=SimpleNamespace(identity="tiny@0123abcd"), tokenizer_sha256="a" * 64, ctx=512),
)


def test_the_stored_references_are_keyed_by_the_metrics_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The baseline and prompt-reference keys the session builds carry METRICS_VERSION, so a bump
    changes their digests (the files they name) and a baseline stored before it is not used."""
    store = _reference_store(tmp_path)
    baseline_key, prompt_key = store.baseline_key(TINY), store.prompt_key(TINY)
    assert baseline_key.metrics_version == prompt_key.metrics_version == METRICS_VERSION
    stored = Baseline(key=baseline_key, ppl=13.0, window_nll=[1300.0], window_tokens=[511], footprint_bytes=1)
    store_baseline(tmp_path, stored)
    assert load_baseline(tmp_path, baseline_key)[0] == stored

    monkeypatch.setattr(references, "METRICS_VERSION", METRICS_VERSION + 1)
    bumped = _reference_store(tmp_path)
    assert bumped.baseline_key(TINY).metrics_version == bumped.prompt_key(TINY).metrics_version == METRICS_VERSION + 1
    assert bumped.baseline_key(TINY).digest() != baseline_key.digest()
    assert bumped.prompt_key(TINY).digest() != prompt_key.digest()
    reloaded, reason = load_baseline(tmp_path, bumped.baseline_key(TINY))
    assert reloaded is None and "metrics_version" in reason, reason
