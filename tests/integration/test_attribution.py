"""Per-layer harm attribution (compute/attribution.py) on tiny models: a deliberately damaged layer
ranks first, swaps leave both models as they were, and the numbers equal a plain computation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from integration_support import load_variant, plain_window_nll

from quant_fixtures.compute.attribution import attribute_layers, decoder_layers, swapped_layer
from quant_fixtures.metrics.perplexity import nonoverlapping_windows

WINDOWS = nonoverlapping_windows(512, 64)


def _plain_mean_kl(reference: Any, candidate: Any, token_ids: torch.Tensor) -> float:
    """Independent: each window read whole by both models, float64 log-softmax, KL(ref || cand) at
    every scored position (the positions predicting tokens first_target..end-1), averaged."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for w in WINDOWS:
            ids = token_ids[w.begin : w.end - 1].unsqueeze(0)
            first = w.first_target - w.begin - 1
            logp = torch.log_softmax(reference(input_ids=ids).logits[0, first:].double(), -1)
            logq = torch.log_softmax(candidate(input_ids=ids).logits[0, first:].double(), -1)
            total += float((logp.exp() * (logp - logq)).sum())
            count += logp.shape[0]
    return total / count


def test_a_damaged_layer_ranks_first_and_the_rest_do_no_harm(
    tiny_models: dict[str, Path], digest_cache: Path, wikitext_ids: torch.Tensor
) -> None:
    """The "quantized" model is the 16-bit one with layer 1's MLP perturbed: layer 1 alone carries all
    the harm (the whole model's KL), every other layer none, and restoring layer 1 removes it."""
    fp16 = load_variant(tiny_models["llama"], "fp16", digest_cache, key="tiny-llama").model
    damaged = load_variant(tiny_models["llama"], "fp16", digest_cache, key="tiny-llama").model
    with torch.no_grad():
        layer: Any = decoder_layers(damaged)[1]
        weight = cast(torch.Tensor, layer.mlp.down_proj.weight)
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * weight.std() * 3)
    owners = [list(decoder_layers(m)) for m in (fp16, damaged)]
    result = attribute_layers(fp16, damaged, wikitext_ids, WINDOWS)
    assert [list(decoder_layers(m)) for m in (fp16, damaged)] == owners  # every layer back with its model
    assert result.positions == sum(w.scored for w in WINDOWS)
    assert result.ranked()[0].layer == 1
    assert result.whole.mean > 1e-3 and result.whole.ci is not None
    assert result.whole.ci[0] <= result.whole.mean <= result.whole.ci[1]
    harm = result.layers[1]
    assert harm.quantized_alone.mean == pytest.approx(result.whole.mean, rel=1e-9)
    assert abs(harm.restored_alone.mean) < 1e-9
    for other in result.layers[:1] + result.layers[2:]:
        assert abs(other.quantized_alone.mean) < 1e-9
        assert other.restored_alone.mean == pytest.approx(result.whole.mean, rel=1e-9)
    assert result.additivity() == pytest.approx(1.0, rel=1e-6)


def test_nf4_layer_numbers_equal_a_plain_computation(
    tiny_models: dict[str, Path], digest_cache: Path, wikitext_ids: torch.Tensor
) -> None:
    """Real NF4 layers: the whole model's KL and layer 0's two KLs against an independent plain
    computation with the same layer swapped by hand."""
    fp16 = load_variant(tiny_models["llama"], "fp16", digest_cache, key="tiny-llama").model
    nf4 = load_variant(tiny_models["llama"], "nf4", digest_cache, key="tiny-llama").model
    result = attribute_layers(fp16, nf4, wikitext_ids, WINDOWS)
    assert result.whole.mean == pytest.approx(_plain_mean_kl(fp16, nf4, wikitext_ids), rel=1e-4)
    reference = load_variant(tiny_models["llama"], "fp16", digest_cache, key="tiny-llama").model
    with swapped_layer(fp16, nf4, 0):
        assert result.layers[0].quantized_alone.mean == pytest.approx(
            _plain_mean_kl(reference, fp16, wikitext_ids), rel=1e-4
        )
        assert result.layers[0].restored_alone.mean == pytest.approx(
            _plain_mean_kl(reference, nf4, wikitext_ids), rel=1e-4
        )
    assert all(h.quantized_alone.mean > 0 for h in result.layers)


def test_models_of_another_depth_are_refused(
    tiny_models: dict[str, Path], digest_cache: Path, wikitext_ids: torch.Tensor
) -> None:
    fp16 = load_variant(tiny_models["llama"], "fp16", digest_cache, key="tiny-llama").model
    other = load_variant(tiny_models["llama"], "fp16", digest_cache, key="tiny-llama").model
    del decoder_layers(other)[-1]
    with pytest.raises(ValueError, match="decoder layers"):
        attribute_layers(fp16, other, wikitext_ids, WINDOWS)


def test_the_recommended_layers_loaded_in_16_bits_give_the_measured_kl(
    tiny_models: dict[str, Path], digest_cache: Path, wikitext_ids: torch.Tensor, tmp_path: Path
) -> None:
    """NF4 on the tiny model with a limit of half its KL: the recommendation comes within it, and a
    real load of the variant entry it prints, pasted into a suite config (its modules in
    BitsAndBytesConfig(llm_int8_skip_modules=...)), gives the KL it measured (the swap is the
    configuration, not an estimate of it)."""
    from integration_support import CPU_OPTIONS

    from quant_fixtures.compute.attribution import recommend
    from quant_fixtures.config import load_config
    from quant_fixtures.models.footprint import model_footprint
    from quant_fixtures.models.loading import load_model
    from quant_fixtures.models.sources import resolve_model
    from quant_fixtures.report.attribution_report import variant_entry, variant_key

    fp16 = load_variant(tiny_models["llama"], "fp16", digest_cache, key="tiny-llama").model
    nf4 = load_variant(tiny_models["llama"], "nf4", digest_cache, key="tiny-llama").model
    attribution = attribute_layers(fp16, nf4, wikitext_ids, WINDOWS)
    limit = attribution.whole.mean / 2
    advice = recommend(attribution, limit, fp16, nf4, wikitext_ids, WINDOWS)
    assert advice.within and advice.measured.mean <= limit < attribution.whole.mean
    assert 0 < len(advice.keep) < len(attribution.layers)
    assert advice.modules[-1] == "lm_head" and all(f"layers.{i}." in " ".join(advice.modules) for i in advice.keep)

    config = tmp_path / "suite.toml"
    entry = variant_entry("tiny-llama", "nf4", advice)
    config.write_text(f'[models.tiny-llama]\npath = "{tiny_models["llama"]}"\n{entry}', encoding="utf-8")
    suite = load_config(config)
    key = variant_key("nf4", advice)
    variant = suite.variant("tiny-llama", key)
    assert suite.variant_keys("tiny-llama")[-1] == key and variant.source is None
    spec = suite.models["tiny-llama"]
    kept = load_model(spec, resolve_model(spec, digest_cache), variant, CPU_OPTIONS).model
    reference = load_variant(tiny_models["llama"], "fp16", digest_cache, key="tiny-llama").model
    assert advice.measured.mean == pytest.approx(_plain_mean_kl(reference, kept, wikitext_ids), rel=1e-4)
    assert advice.footprint_bytes == model_footprint(kept, torch.float16) > advice.quantized_footprint_bytes

    def plain_ppl(model: Any) -> float:
        sums = [plain_window_nll(model, wikitext_ids, w) for w in WINDOWS]
        return math.exp(sum(n for n, _ in sums) / sum(t for _, t in sums))

    assert advice.delta_ppl_pct == pytest.approx(100 * (plain_ppl(kept) / plain_ppl(reference) - 1), abs=1e-3)


def test_a_delta_ppl_gate_widens_the_recommendation(
    tiny_models: dict[str, Path], digest_cache: Path, wikitext_ids: torch.Tensor
) -> None:
    """A KL limit the variant meets already keeps no layer; with a ΔPPL limit of half the variant's
    ΔPPL beside it, layers are kept until the measured ΔPPL is within it too."""
    from quant_fixtures.compute.attribution import recommend

    fp16 = load_variant(tiny_models["llama"], "fp16", digest_cache, key="tiny-llama").model
    nf4 = load_variant(tiny_models["llama"], "nf4", digest_cache, key="tiny-llama").model
    attribution = attribute_layers(fp16, nf4, wikitext_ids, WINDOWS)
    loose = 2 * attribution.whole.mean
    alone = recommend(attribution, loose, fp16, nf4, wikitext_ids, WINDOWS)
    assert alone.keep == [] and alone.within and alone.delta_ppl_limit is None
    assert alone.delta_ppl_pct > 0
    ppl_limit = alone.delta_ppl_pct / 2
    both = recommend(attribution, loose, fp16, nf4, wikitext_ids, WINDOWS, max_delta_ppl_pct=ppl_limit)
    assert both.keep and both.delta_ppl_limit == ppl_limit
    assert both.within == (both.delta_ppl_pct <= ppl_limit and both.measured.mean <= loose)
    assert both.within or len(both.keep) == len(attribution.layers)


def test_the_command_writes_the_ranked_table_the_document_and_the_chart(
    tiny_models: dict[str, Path], digest_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m quant_fixtures.attribute` as a user runs it, on a suite config naming the tiny model."""
    import json

    from quant_fixtures.attribute import main

    config = tmp_path / "suite.toml"
    # the model's own nf4 gate is the default limit: so small that every layer is kept
    config.write_text(f'[models.tiny]\npath = "{tiny_models["llama"]}"\n[models.tiny.gates.nf4]\nmax_kl_mean = 1e-9\n')
    common = ["--suite-config", str(config), "--results-dir", str(tmp_path / "out"), "--cache-dir", str(digest_cache)]
    assert main(["--model", "tiny", "--variant", "nf4", "--windows", "2", "--ctx", "64", *common]) == 0
    document = json.loads((tmp_path / "out" / "attribution_tiny_nf4.json").read_text())
    n_layers = len(document["layers"])
    assert sorted(document["ranked"]) == list(range(n_layers)) and document["budget"]["scored_positions"] == 126
    assert sorted(document["recommendation"]["keep_layers"]) == list(range(n_layers))
    assert document["recommendation"]["limit"] == 1e-9
    markdown = (tmp_path / "out" / "attribution_tiny_nf4.md").read_text()
    assert markdown.count("\n| ") == n_layers + 1 and "llm_int8_skip_modules=" in markdown
    assert f'[models.tiny.variants.nf4_keep{n_layers}]\nquantize = "nf4"\nkeep_16bit = [' in markdown
    assert (tmp_path / "out" / "attribution_tiny_nf4.png").stat().st_size > 0
    assert "Per-layer harm: tiny nf4" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--model", "nope", "--variant", "nf4"], "--model 'nope'"),
        (["--model", "tiny", "--variant", "fp16"], "--variant 'fp16'"),
        (["--model", "tiny", "--variant", "nf4", "--limit", "-1"], "--limit -1.0"),
        (["--model", "tiny", "--variant", "nf4", "--limit", "1", "--footprint-mb", "9"], "give one"),
    ],
)
def test_the_command_refuses_bad_input_in_one_line(
    args: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from quant_fixtures.attribute import main

    config = tmp_path / "suite.toml"
    config.write_text(f'[models.tiny]\npath = "{tmp_path}"\n')
    assert main([*args, "--suite-config", str(config)]) == 4
    assert named in capsys.readouterr().err


def test_a_footprint_budget_buys_the_layers_that_fit(
    tiny_models: dict[str, Path], digest_cache: Path, wikitext_ids: torch.Tensor
) -> None:
    """Room for two layers in 16 bits: at most two are kept, the measured footprint is within the
    budget and the KL below the variant's; a budget below the variant's own footprint is refused."""
    from quant_fixtures.compute.attribution import recommend_for_memory
    from quant_fixtures.models.footprint import model_footprint

    fp16 = load_variant(tiny_models["llama"], "fp16", digest_cache, key="tiny-llama").model
    nf4 = load_variant(tiny_models["llama"], "nf4", digest_cache, key="tiny-llama").model
    attribution = attribute_layers(fp16, nf4, wikitext_ids, WINDOWS)
    base = model_footprint(nf4, torch.float16)
    one_layer = model_footprint(decoder_layers(fp16)[0], torch.float16) - model_footprint(
        decoder_layers(nf4)[0], torch.float16
    )
    advice = recommend_for_memory(attribution, base + 2 * one_layer, fp16, nf4, wikitext_ids, WINDOWS)
    assert 1 <= len(advice.keep) <= 2 and advice.within and advice.limit is None
    assert advice.footprint_bytes <= base + 2 * one_layer
    assert advice.measured.mean < attribution.whole.mean
    with pytest.raises(ValueError, match="below the variant's own"):
        recommend_for_memory(attribution, base - 1, fp16, nf4, wikitext_ids, WINDOWS)


def test_a_bad_suite_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from quant_fixtures.attribute import main

    config = tmp_path / "suite.toml"
    config.write_text("[models.tiny]\npath = 3\n")
    assert main(["--model", "tiny", "--variant", "nf4", "--suite-config", str(config)]) == 4
    assert str(config) in capsys.readouterr().err
