"""Exact KL on CUDA: FP16 logits rebuilt from the stored FP16 hidden states and head equal the FP16
forward's (float16 on the GPU: within the noise of another batch shape), and the corpus KL of NF4
against them, both directions, matches a plain full-softmax computation within 1e-3 relative."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _load(path: Path, nf4: bool) -> Any:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = (
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float16)
        if nf4
        else None
    )
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float16, device_map={"": "cuda:0"}, quantization_config=quant
    ).eval()


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def test_rebuilt_logits_and_exact_corpus_kl_on_cuda(tiny_llama: Path) -> None:
    from quant_fixtures.compute.corpus_kl import HiddenRecorder, KLAgainstReference
    from quant_fixtures.compute.scoring import score_windows
    from quant_fixtures.metrics.perplexity import nonoverlapping_windows

    fp16, nf4 = _load(tiny_llama, False), _load(tiny_llama, True)
    ids = torch.randint(3, 512, (4 * 128,), generator=torch.Generator().manual_seed(0))
    windows = nonoverlapping_windows(ids.numel(), 128)
    recorder = HiddenRecorder(len(windows))
    score_windows(fp16, ids, windows, batch_size=4, hook=recorder)
    reference = recorder.tensors(fp16)
    hook = KLAgainstReference(reference, [w.scored for w in windows])
    score_windows(nf4, ids, windows, batch_size=4, hook=hook)
    ours = hook.positions()

    kl_pq, kl_qp, rebuilt_gap, start = [], [], 0.0, 0
    from quant_fixtures.metrics.reference_head import ReferenceHead

    head = ReferenceHead.from_tensors(reference)
    for w in windows:  # plain: each model's own forward of the window alone, float64 softmax
        inputs = ids[w.begin : w.end].unsqueeze(0).cuda()
        with torch.inference_mode():
            a = fp16(input_ids=inputs).logits[0, :-1]
            b = nf4(input_ids=inputs).logits[0, :-1]
        n = a.shape[0]
        rebuilt = head.logits(reference["hidden"][start : start + n].cuda())
        rebuilt_gap = max(rebuilt_gap, float((rebuilt.float() - a.float()).abs().max()))
        logp, logq = torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1)
        kl_pq.append(_kl(logp, logq).cpu())
        kl_qp.append(_kl(logq, logp).cpu())
        start += n
    plain_pq, plain_qp = torch.cat(kl_pq).mean().item(), torch.cat(kl_qp).mean().item()
    print(
        f"\n[measured] max |rebuilt - forward| FP16 logit = {rebuilt_gap:.3g}; corpus KL {ours['kl_pq'].mean():.6g} "
        f"vs plain {plain_pq:.6g}; reverse {ours['kl_qp'].mean():.6g} vs {plain_qp:.6g}"
    )
    assert rebuilt_gap < 0.05  # float16 logits of magnitude ~10: a few ulps of another batch shape
    assert plain_pq > 1e-4  # NF4 really moved the distributions
    assert ours["kl_pq"].mean() == pytest.approx(plain_pq, rel=1e-3)
    assert ours["kl_qp"].mean() == pytest.approx(plain_qp, rel=1e-3)
