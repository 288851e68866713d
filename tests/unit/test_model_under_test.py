"""A model is resolved once per run into a ModelUnderTest (session/model_facts.py), and the stages of
a pass read that object: none of them goes back to ModelFacts with the model's key."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_prompt_preflight import tiny_model_dir

from quant_fixtures.config import config_from_table
from quant_fixtures.session import context, corpus_plans, long_context_stage, long_plan, passes, prompt_stage
from quant_fixtures.session.model_facts import ModelFacts
from quant_fixtures.session.references import ReferenceStore
from quant_fixtures.settings import PerplexityProtocol
from quant_fixtures.store.prompt_reference import tokenizer_sha256


def _facts(tmp_path: Path, positions: int, ctx: int | None) -> ModelFacts:
    directory = tiny_model_dir(tmp_path / "model", positions)
    suite = config_from_table({"models": {"tiny": {"path": str(directory)}}}, tmp_path / "suite.toml")
    protocol = PerplexityProtocol(ctx=ctx, max_tokens=None, stride=None, batch_size=1)
    return ModelFacts(suite, tmp_path / "cache", protocol)


def test_a_model_is_resolved_once_with_what_the_passes_read(tmp_path: Path) -> None:
    facts = _facts(tmp_path, positions=64, ctx=128)
    model = facts.under_test("tiny")
    assert facts.under_test("tiny") is model  # once per run
    assert model.key == "tiny" and model.spec is facts.spec("tiny")
    assert model.resolved.directory == tmp_path / "model"
    assert model.max_length == 64 and model.ctx == 64  # --ctx 128, capped at the model's maximum
    assert model.config.max_position_embeddings == 64
    assert model.tokenizer_sha256 == tokenizer_sha256(model.tokenizer)


def test_the_up_front_checks_get_the_same_window_without_resolving(tmp_path: Path) -> None:
    """Preflight asks for the window and the maximum context alone: the weights are not hashed."""
    facts = _facts(tmp_path, positions=64, ctx=32)
    assert (facts.ctx("tiny"), facts.max_length("tiny")) == (32, 64)
    assert not (tmp_path / "cache" / "digests").exists()
    assert (facts.under_test("tiny").ctx, facts.under_test("tiny").max_length) == (32, 64)


STAGES: list[Callable[..., object]] = [
    passes.fp16_pass,
    passes.variant_pass,
    prompt_stage.fp16_prompt_stage,
    prompt_stage.variant_prompt_stage,
    long_context_stage.fp16_long_stage,
    long_context_stage.variant_long_stage,
    long_plan.long_plan,
    corpus_plans.CorpusPlans.plan,
    corpus_plans.CorpusPlans.joined_ids,
    ReferenceStore.load,
    ReferenceStore.baseline_key,
    ReferenceStore.prompt_key,
    ReferenceStore.long_key,
]


@pytest.mark.parametrize("stage", STAGES, ids=lambda f: f.__qualname__)
def test_every_stage_receives_the_resolved_model(stage: Callable[..., object]) -> None:
    assert inspect.signature(stage).parameters["model"].annotation == "ModelUnderTest"


def test_a_pass_holds_no_model_facts_to_look_up_again() -> None:
    """What a pass receives (its context and the services it shares) holds no ModelFacts, and the
    corpus plans and reference store that it reaches through them are built without one."""
    annotations = {
        **inspect.get_annotations(context.PassContext),
        **inspect.get_annotations(context.SessionServices),
    }
    assert "ModelFacts" not in annotations.values()
    for built in (corpus_plans.CorpusPlans, ReferenceStore):
        assert "ModelFacts" not in {p.annotation for p in inspect.signature(built).parameters.values()}


def test_the_measurements_are_passed_by_name() -> None:
    """_measurements takes the pass's results by keyword: twelve positional arguments were easy to swap."""
    parameters = inspect.signature(passes._measurements).parameters.values()
    positional = [p.name for p in parameters if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert positional == ["run", "model", "variant", "loaded"]


# The fields all three reference keys share now come from one base class (store/keys.py); the stored
# files are named by these digests, so moving the fields must not change them (values from before).
SHARED: dict[str, Any] = {
    "model": "tiny",
    "weights_identity": "sha256:abc",
    "tokenizer_sha256": "t" * 64,
    "weight_dtype": "float16",
    "compute_dtype": "float32",
    "device_type": "cpu",
    "metrics_version": 3,
    "environment": {"device_type": "cpu"},
}


def test_the_reference_keys_share_their_fields_and_keep_their_digests() -> None:
    from test_baseline import KEY

    from quant_fixtures.store.keys import ReferenceKeyBase
    from quant_fixtures.store.long_reference import LongReferenceKey
    from quant_fixtures.store.prompt_reference import ReferenceKey

    prompt_key = ReferenceKey(
        **SHARED,
        prompts_sha256="p" * 64,
        categories=("a",),
        use_chat_template=True,
        max_new_tokens_cap=16,
        top_k=256,
    )
    long_key = LongReferenceKey(
        **SHARED,
        dataset_sha256="d" * 64,
        length=256,
        stretches=2,
        chunk_tokens=128,
        probe_lengths=(128,),
        probe_depths=(0.5,),
        probe_keys=2,
        probe_version=1,
    )
    assert all(isinstance(key, ReferenceKeyBase) for key in (KEY, prompt_key, long_key))
    assert KEY.digest() == "e70c8b70267116b9d840f786114ad650c3c45d0a008f6f7b40a3e1b4285b79af"
    assert prompt_key.digest() == "ea10d6ecb2f1d083a3a1e22ca1666ab37f146cf716050fbcee4f12409c0b6221"
    assert long_key.digest() == "ec1cfc6887a12c1ad3ea43bb2e0c68588b3e22e7cc4924a4134ef408f3479e9e"
