"""The tolerance-aware snapshot: exact storage, tolerant comparison, readable failure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from quant_fixtures.config import DEFAULT_SNAPSHOT_TOLERANCES, load_config
from quant_fixtures.json_types import JsonObject
from quant_fixtures.plugin.snapshot_extension import tolerant_json_extension
from quant_fixtures.report.snapshot import (
    Tolerances,
    environment_note,
    settings_tag,
    snapshot_differences,
    within_tolerance,
)

pytest_plugins = ["pytester"]

TOL: Tolerances = {"kl_mean": {"rel": 0.02, "abs": 5e-4}, "ppl": {"rel": 1e-3}, "flips": {"abs": 0}}


def test_numbers_within_abs_or_rel_match() -> None:
    assert within_tolerance({"kl_mean": 0.1004}, {"kl_mean": 0.1}, TOL)  # |d| 4e-4 <= abs
    assert within_tolerance({"kl_mean": 1.019}, {"kl_mean": 1.0}, TOL)  # rel 1.9 %
    assert not within_tolerance({"kl_mean": 1.03}, {"kl_mean": 1.0}, TOL)
    assert within_tolerance({"ppl": 20.019}, {"ppl": 20.0}, TOL)
    assert not within_tolerance({"ppl": 20.03}, {"ppl": 20.0}, TOL)


def test_flip_counts_differ_only_when_a_binomial_test_says_so() -> None:
    # Never exact equality of a count: 4 / 5 / 6 flips out of 40 is what other CPUs give.
    assert within_tolerance({"flips": 3}, {"flips": 2}, TOL)
    assert within_tolerance({"flips": 6}, {"flips": 4}, TOL)
    # 14 vs 4 (NF4's count where INT8's was): exact two-sided p = 0.031 < 0.05
    lines = snapshot_differences({"flips": 14}, {"flips": 4}, TOL)
    assert len(lines) == 1 and "flips: 14 vs snapshot 4" in lines[0] and "binomial" in lines[0]
    assert not within_tolerance({"flips": 6}, {"flips": 0}, TOL)


def _int8(kl_mean: float, spread: float | None = None) -> JsonObject:
    summary: JsonObject = {"variants": {"int8": {"kl_mean": kl_mean}, "nf4": {"kl_mean": 0.2}}}
    if spread is not None:
        summary["reproduction"] = {"spread": {"int8": {"kl_mean": spread}}}
    return summary


def test_the_snapshots_reproduction_spread_widens_the_tolerance() -> None:
    # INT8's mean KL measured again with other kernels moved 0.0004 between the runs of the
    # snapshot's reproduction measurement: twice that is allowed, more is a change.
    old = _int8(0.0199, spread=0.0004)
    assert within_tolerance(_int8(0.0206), old, TOL)  # +0.0007 <= 2 x 0.0004
    (line,) = snapshot_differences(_int8(0.0208), old, TOL)  # +0.0009
    assert line.startswith("variants.int8.kl_mean: 0.0208 vs snapshot 0.0199")
    assert "2 x the reproduction spread 0.0004" in line
    # Without a measured spread the configured tolerance applies (abs 5e-4 here).
    (line,) = snapshot_differences(_int8(0.0206), _int8(0.0199), TOL)
    assert "the configured tolerance" in line
    # Only the snapshot's own record counts, not the new run's; nor another variant's spread.
    assert snapshot_differences(_int8(0.0208, spread=0.01), _int8(0.0199), TOL)
    other = {
        "variants": {"int8": {"kl_mean": 0.0199}, "nf4": {"kl_mean": 0.2}},
        "reproduction": {"spread": {"nf4": {"kl_mean": 0.01}}},
    }
    assert snapshot_differences(_int8(0.0208), other, TOL)


def test_the_records_never_compared() -> None:
    old: JsonObject = {**_int8(0.02, spread=0.0), "tolerances": {"int8": {}}, "environment": {"described": "a"}}
    new: JsonObject = {
        **_int8(0.02),
        "reproduction": {"spread": {}},
        "tolerances": {"int8": {"kl_mean": 1}},
        "environment": {"described": "b"},
    }
    assert within_tolerance(new, old, TOL)


def test_a_reproduction_measurement_records_the_spread_and_paired_prompts() -> None:
    from golden_measurements import golden_evaluations

    from quant_fixtures.report.reproduction import ReproductionError, measure

    runs = {"a": golden_evaluations(1.01), "b": golden_evaluations(1.012)}
    record = measure("tiny", runs, "tag", {"a": "as given", "b": "other kernels"})
    spread = record["spread"]["int8"]
    assert spread["ppl"] == pytest.approx(abs(runs["b"]["int8"].perplexity.ppl - runs["a"]["int8"].perplexity.ppl))
    assert spread["kl_mean"] == 0.0 and record["spread"]["fp16"]["ppl"] == 0.0
    paired = record["prompt_kl_paired_relative_difference"]["int8"]
    assert paired is not None and paired["max"] == 0.0
    assert [r["label"] for r in record["runs"]] == ["a", "b"] and record["runs"][1]["settings"] == "other kernels"
    with pytest.raises(ReproductionError, match="at least two runs"):
        measure("tiny", {"a": runs["a"]}, "tag")
    fewer = {"a": runs["a"], "b": {k: v for k, v in runs["b"].items() if k != "nf4"}}
    with pytest.raises(ReproductionError, match="run 'b' was measured with other settings or variants"):
        measure("tiny", fewer, "tag")


def test_environment_is_recorded_not_compared() -> None:
    new_environment: JsonObject = {"described": "AVX2 box", "cpu_capability": "AVX2"}
    old_environment: JsonObject = {"described": "AMX box", "cpu_capability": "AVX512"}
    new = {"ppl": 20.0, "environment": new_environment}
    old = {"ppl": 20.0, "environment": old_environment}
    assert within_tolerance(new, old, TOL)
    note = environment_note(old_environment, new_environment)
    assert note.startswith("snapshot made with AMX box; this run: AVX2 box") and "cpu_capability" in note
    assert "same environment" in environment_note(old_environment, old_environment)
    # Another thread count is named; a key an older snapshot lacks is not a difference.
    threads = environment_note({**new_environment, "cpu_threads": 2}, {**new_environment, "cpu_threads": 16})
    assert "differs in cpu_threads" in threads
    assert "same environment" in environment_note(new_environment, {**new_environment, "cpu_threads": 2})


def test_untolerated_values_and_structure_must_be_equal() -> None:
    assert not within_tolerance({"other": 1.0000001}, {"other": 1.0}, TOL)  # no tolerance: exact
    assert not within_tolerance({"gates": {"kl_mean": "FAIL"}}, {"gates": {"kl_mean": "pass"}}, TOL)
    assert not within_tolerance({"ppl": 1.0, "extra": 1}, {"ppl": 1.0}, TOL)
    assert not within_tolerance({"kl_mean": None}, {"kl_mean": 0.1}, TOL)
    assert not within_tolerance({"kl_mean": True}, {"kl_mean": 1}, TOL)
    assert within_tolerance({"v": {"int8": {"kl_mean": 0.1002}}}, {"v": {"int8": {"kl_mean": 0.1}}}, TOL)


def test_extension_compares_parsed_json() -> None:
    ext = tolerant_json_extension(TOL)()
    assert ext.matches(serialized_data=json.dumps({"ppl": 20.01}), snapshot_data=json.dumps({"ppl": 20.0}))
    assert not ext.matches(serialized_data=json.dumps({"ppl": 21.0}), snapshot_data=json.dumps({"ppl": 20.0}))
    assert not ext.matches(serialized_data=json.dumps({"ppl": 21.0}), snapshot_data=None)


def test_serializer_does_not_round() -> None:
    ext = tolerant_json_extension(TOL)()
    text = ext.serialize({"kl_mean": 0.123456789012345})
    assert "0.123456789012345" in text


TEST_FILE = """
from quant_fixtures.plugin.snapshot_extension import tolerant_json_extension

TOL = {tol!r}

def test_summary(snapshot):
    summary = {{"variants": {{"int8": {{"kl_mean": {kl}, "ppl": 20.0, "gates": {{"kl_mean": "pass"}}}}}}}}
    assert summary == snapshot.use_extension(tolerant_json_extension(TOL))
"""


@pytest.mark.parametrize("new_kl, passes", [(0.1004, True), (0.1019, True), (0.2, False)])
def test_perturbed_result_inside_tolerance_passes_outside_fails(
    pytester: pytest.Pytester, new_kl: float, passes: bool
) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_snap=TEST_FILE.format(tol=TOL, kl=0.1))
    # The suite's own plugin is not needed here (and would import torch inside the inner run).
    assert pytester.runpytest("-p", "no:quant_fixtures", "--snapshot-update").ret == 0
    pytester.makepyfile(test_snap=TEST_FILE.format(tol=TOL, kl=new_kl))
    result = pytester.runpytest("-p", "no:quant_fixtures", "-vv")
    if passes:
        assert result.ret == 0
    else:
        assert result.ret == 1
        out = result.stdout.str()
        assert "kl_mean" in out and "0.2" in out  # the diff names the metric and shows the new value


def test_default_tolerances_cover_every_snapshot_metric() -> None:
    from quant_fixtures.metrics.registry import METRICS, SNAPSHOT_METRICS

    assert set(DEFAULT_SNAPSHOT_TOLERANCES) == set(SNAPSHOT_METRICS)
    assert all(DEFAULT_SNAPSHOT_TOLERANCES[m] == METRICS[m].tolerance for m in SNAPSHOT_METRICS)


COMMITTED = sorted((Path(__file__).resolve().parents[1] / "harm" / "__snapshots__" / "test_snapshots").glob("*.json"))
REPRODUCTION = Path(__file__).resolve().parents[1] / "harm" / "reproduction"
CHANGE = 0.10  # a change of this size in any gated metric must fail
RATE_OF_COUNT = {"flip_rate": "flips", "retrieval_flip_rate": "retrieval_flips"}


def _committed_id(path: Path) -> str:
    """The settings tag of a committed snapshot file (its name ends with ``@<hardware kind>``)."""
    return path.stem.split("[", 2)[2].rstrip("]").split("@")[0]


@pytest.mark.parametrize("path", COMMITTED, ids=_committed_id)
def test_a_ten_percent_change_of_any_gated_metric_fails_naming_it(path: Path) -> None:
    """Each number a variant gates, and every other tolerated number, moved by 10 % either way
    against the committed snapshot: the comparison reports it, naming the variant and metric."""
    from quant_fixtures.metrics.registry import METRICS

    old = json.loads(path.read_text())
    tolerances = load_config().snapshot_tolerances
    assert within_tolerance(old, old, tolerances)
    checked = 0
    for variant, values in old["variants"].items():
        if not values["gates"]:  # FP16: nothing is gated, its deltas are zero by definition
            continue
        # A rate is compared through its count (exact binomial test on the count).
        covered = set(tolerances) | {rate for rate, count in RATE_OF_COUNT.items() if count in tolerances}
        assert set(values["gates"]) <= covered, f"{variant}: a gated metric without a snapshot tolerance"
        for metric in tolerances:
            if METRICS[metric].is_count or not values.get(metric):
                continue
            for factor in (1 + CHANGE, 1 - CHANGE):
                changed = json.loads(path.read_text())
                changed["variants"][variant][metric] = values[metric] * factor
                lines = snapshot_differences(changed, old, tolerances)
                assert any(line.startswith(f"variants.{variant}.{metric}:") for line in lines), (
                    f"{variant} {metric} x{factor} passed: {old.get('tolerances', {}).get(variant, {}).get(metric)}"
                )
                checked += 1
    assert checked >= 10


ACROSS_KINDS_CHANGE = 0.50  # ... and one of this size on a machine of a kind with no snapshot of its own


@pytest.mark.parametrize("path", COMMITTED, ids=_committed_id)
def test_a_fifty_percent_change_fails_on_a_machine_of_another_kind(path: Path) -> None:
    """Compared from a machine of another hardware kind (at the tolerance measured across kinds),
    each gated and tolerated number of a quantized variant moved by 50 % either way still fails."""
    from quant_fixtures.metrics.registry import METRICS
    from quant_fixtures.report.snapshot import measured_across_kinds

    old = json.loads(path.read_text())
    assert measured_across_kinds(old), f"{path.name}: its record measured no spread across kinds (make snapshot-noise)"
    tolerances = load_config().snapshot_tolerances
    assert within_tolerance(old, old, tolerances, across_kinds=True)
    checked = 0
    for variant, values in old["variants"].items():
        if not values["gates"]:
            continue
        for metric in tolerances:
            if METRICS[metric].is_count or not values.get(metric):
                continue
            for factor in (1 + ACROSS_KINDS_CHANGE, 1 - ACROSS_KINDS_CHANGE):
                changed = json.loads(path.read_text())
                changed["variants"][variant][metric] = values[metric] * factor
                lines = snapshot_differences(changed, old, tolerances, across_kinds=True)
                assert any(line.startswith(f"variants.{variant}.{metric}:") for line in lines), (
                    f"{variant} {metric} x{factor} passed across kinds: {old['tolerances'][variant][metric]}"
                )
                checked += 1
    assert checked >= 10


@pytest.mark.parametrize("path", COMMITTED, ids=_committed_id)
def test_the_committed_snapshot_is_named_after_the_hardware_kind_it_records(path: Path) -> None:
    from quant_fixtures.report.snapshot import hardware_kind

    old = json.loads(path.read_text())
    assert path.stem.endswith(f"@{hardware_kind(old['environment'])}]")


@pytest.mark.parametrize("path", COMMITTED, ids=_committed_id)
def test_the_committed_snapshot_records_its_reproduction_noise(path: Path) -> None:
    """A CPU snapshot carries the reproduction measurement of its own settings (the one committed
    in tests/harm/reproduction/) and the moves it allows follow from it and the config."""
    from quant_fixtures.report.reproduction import read_record
    from quant_fixtures.report.snapshot import allowed_moves

    old = json.loads(path.read_text())
    model, tag = path.stem.split("[")[1].rstrip("]"), _committed_id(path)
    record = read_record(REPRODUCTION, model, tag)
    assert record is not None, f"no reproduction measurement for {model} [{tag}] in {REPRODUCTION}"
    assert old["reproduction"] == record, "re-record the snapshot (--snapshot-update) after re-measuring the noise"
    assert old["tolerances"] == allowed_moves(old["variants"], load_config().snapshot_tolerances, record)
    runs = record["runs"]
    assert isinstance(runs, list) and len(runs) >= 3


def test_settings_tag_carries_what_selects_the_content(tmp_path: Path) -> None:
    from dataclasses import replace

    from quant_fixtures.settings import GatePolicy, LoadSettings, Paths, PerplexityProtocol, PromptProtocol, RunSettings

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("{}\n")
    base = RunSettings(
        models=("m",),
        variants=("fp16", "int8", "nf4"),
        paths=Paths(tmp_path, tmp_path, tmp_path),
        perplexity=PerplexityProtocol(ctx=2048, max_tokens=4096, stride=None, batch_size=1),
        prompts=PromptProtocol(path=prompts, max_new_tokens_cap=16),
        load=LoadSettings(device="cpu"),
        gates=GatePolicy(),
    )

    def with_prompts(categories: tuple[str, ...]) -> RunSettings:
        return replace(base, prompts=replace(base.prompts, categories=categories))

    tag = settings_tag(base)
    assert tag.endswith("-float16-fp16+int8+nf4") and "ppl4096" in tag and "mnt16" in tag
    assert settings_tag(replace(base, variants=("fp16", "int8"))).endswith("-fp16+int8")
    assert "-billing+returns-" in settings_tag(with_prompts(categories=("billing", "returns")))
    odd = settings_tag(with_prompts(categories=("Legal Q&A/<misc>",)))
    assert "cats" in odd and not set('\\/?*:|"<>') & set(odd)  # any category name gives a safe file name
    # Batch sizes do not select content: the same snapshot must hold whatever they are.
    assert (
        settings_tag(
            replace(
                base, perplexity=replace(base.perplexity, batch_size=8), prompts=replace(base.prompts, gen_batch_size=5)
            )
        )
        == tag
    )


def test_hardware_kinds_are_told_apart() -> None:
    from quant_fixtures.report.snapshot import cpu_vendor, hardware_kind

    amd = {
        "device_type": "cpu",
        "cpu_vendor": "amd",
        "cpu_isa": "avx2,avx512f",
        "cpu_capability": "AVX2",
        "cpu_threads": 2,
        "cpu_switches": "A=1",
    }
    assert hardware_kind(amd) == "amd-avx2+avx512f-kernels-avx2"
    kinds = {
        hardware_kind(env)
        for env in (
            amd,
            {**amd, "cpu_vendor": "intel"},
            {**amd, "cpu_isa": "amx_tile,avx2,avx512f"},
            {**amd, "cpu_capability": "AVX512"},  # the CPU's own kernels: other numbers
            {"device_type": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "capability": "9.0"},
        )
    }
    assert len(kinds) == 5 and all(re.fullmatch(r"[a-z0-9.+-]+", k) for k in kinds)
    # threads and switches move numbers too, but they are this run's choices, compared as usual
    assert hardware_kind({**amd, "cpu_threads": 16, "cpu_switches": "B=2"}) == hardware_kind(amd)
    assert cpu_vendor("AMD EPYC 9R14") == "amd" and cpu_vendor("Intel(R) Xeon(R) Platinum 8480+") == "intel"
    with pytest.raises(ValueError, match="no environment"):
        hardware_kind(None)


def test_a_reproduction_measurement_keeps_the_runs_of_other_kinds_apart() -> None:
    from golden_measurements import golden_evaluations

    from quant_fixtures.report.reproduction import ReproductionError, measure

    runs = {"a": golden_evaluations(1.01), "b": golden_evaluations(1.01), "native": golden_evaluations(1.03)}
    record = measure("tiny", runs, "tag", other_kinds={"native"})
    assert record["spread"]["int8"]["ppl"] == 0.0  # a and b: one kind
    across = record["across_kinds"]
    assert across["runs"] == ["native"]
    assert across["spread"]["int8"]["ppl"] == pytest.approx(
        runs["native"]["int8"].perplexity.ppl - runs["a"]["int8"].perplexity.ppl
    )
    with pytest.raises(ReproductionError, match="two runs on one kind"):
        measure("tiny", {"a": runs["a"], "native": runs["native"]}, "tag", other_kinds={"native"})
    assert "across_kinds" not in measure("tiny", {"a": runs["a"], "b": runs["b"]}, "tag")
