"""The Hub path without mocks: a real Hugging Face cache on disk, the real hub client, offline.

The cache is laid out as huggingface_hub writes it (blobs, snapshot symlinks, refs/main) and the
suite runs against it in a subprocess whose HF_HUB_CACHE points there, so huggingface_hub reads
its settings at import as it does in a real run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

REPO_ID = "tiny-org/tiny-llama"
COMMIT = hashlib.sha1(b"tiny-llama integration snapshot").hexdigest()

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import torch
    from huggingface_hub import constants

    from quant_fixtures.config import ModelSpec
    from quant_fixtures.models.loading import load_model
    from quant_fixtures.models.sources import ModelUnavailableError, resolve_model
    from quant_fixtures.settings import LoadSettings
    from quant_fixtures.variants import VARIANTS

    repo_id, commit, cache_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    out = {"hub_cache": constants.HF_HUB_CACHE, "offline": constants.HF_HUB_OFFLINE}
    spec = ModelSpec(key="tiny", hub_id=repo_id, revision="main")
    resolved = resolve_model(spec, cache_dir)
    out["directory"], out["identity"] = str(resolved.directory), resolved.identity
    pinned = resolve_model(ModelSpec(key="tiny", hub_id=repo_id, revision=commit), cache_dir)
    out["pinned"] = [str(pinned.directory), pinned.identity]
    options = LoadSettings(device="cpu", weight_dtype="float16")
    ids = torch.arange(1, 33).unsqueeze(0)
    for variant in ("fp16", "nf4"):
        loaded = load_model(spec, resolved, VARIANTS[variant], options)
        with torch.inference_mode():
            logits = loaded.model(input_ids=ids).logits
        out[variant] = {"footprint": loaded.footprint_bytes, "finite": bool(torch.isfinite(logits).all()),
                        "shape": list(logits.shape), "tokenizer": len(loaded.tokenizer),
                        "linear": type(loaded.model.model.layers[0].mlp.up_proj).__name__}
    errors = {}
    for key, hub_id, revision in (("ghost", "tiny-org/ghost", "main"), ("tiny", repo_id, "v9")):
        try:
            resolve_model(ModelSpec(key=key, hub_id=hub_id, revision=revision), cache_dir)
        except ModelUnavailableError as exc:
            errors[f"{hub_id}@{revision}"] = {"message": str(exc), "cause": repr(exc.__cause__),
                                             "suppressed": exc.__suppress_context__}
    out["errors"] = errors
    print("RESULT " + json.dumps(out))
""")


def build_hub_cache(model_dir: Path, cache: Path, repo_id: str, commit: str) -> Path:
    """<cache>/models--org--name/{blobs/<sha256>, snapshots/<commit>/<file> -> blob, refs/main}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blobs, snapshot = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for source in sorted(model_dir.iterdir()):
        data = source.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / source.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)  # the hub client writes the bare hash
    return snapshot


@pytest.fixture(scope="module")
def hub_run(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """(the snapshot directory, what the script in a fresh process printed after RESULT)."""
    root = tmp_path_factory.mktemp("hub")
    snapshot = build_hub_cache(tiny_models["llama"], root / "hub-cache", REPO_ID, COMMIT)
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(root / "hub-cache"),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(root / "hf-home"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, REPO_ID, COMMIT, str(root / "quant-cache")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return snapshot, json.loads(line[len("RESULT ") :])


def test_cache_is_laid_out_like_the_hub_client_writes_it(hub_run: tuple[Path, dict[str, Any]]) -> None:
    from huggingface_hub import scan_cache_dir

    snapshot, result = hub_run
    info = scan_cache_dir(snapshot.parents[2])
    assert not info.warnings
    (repo,) = info.repos
    assert repo.repo_id == REPO_ID and repo.repo_type == "model"
    (revision,) = repo.revisions
    assert revision.commit_hash == COMMIT and revision.refs == frozenset({"main"})
    assert {f.file_name for f in revision.files} >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert result["hub_cache"] == str(snapshot.parents[2]) and result["offline"] is True


def test_resolve_returns_the_snapshot_and_pins_the_commit(hub_run: tuple[Path, dict[str, Any]]) -> None:
    snapshot, result = hub_run
    assert Path(result["directory"]) == snapshot
    assert result["identity"] == f"hub:{REPO_ID}@{COMMIT}"
    assert COMMIT in result["identity"]
    # Asking for the commit itself gives the same directory and identity.
    assert result["pinned"] == [str(snapshot), result["identity"]]


def test_load_model_works_from_the_snapshot(hub_run: tuple[Path, dict[str, Any]]) -> None:
    _, result = hub_run
    for variant, linear in (("fp16", "Linear"), ("nf4", "Linear4bit")):
        loaded = result[variant]
        assert loaded["finite"] and loaded["shape"] == [1, 32, 49152] and loaded["tokenizer"] == 49152
        assert loaded["linear"] == linear
    assert result["fp16"]["footprint"] > result["nf4"]["footprint"]


@pytest.mark.parametrize("which", ["tiny-org/ghost@main", f"{REPO_ID}@v9"])
def test_missing_model_raises_one_line_remedy(hub_run: tuple[Path, dict[str, Any]], which: str) -> None:
    _, result = hub_run
    error = result["errors"][which]
    message = error["message"]
    key = "ghost" if "ghost" in which else "tiny"
    assert "\n" not in message
    assert repr(key) in message and which in message
    assert "HF_HOME" in message
    assert "path = " in message and "quant_suite.toml" in message
    assert error["cause"] == "None" and error["suppressed"] is True  # no chained traceback
