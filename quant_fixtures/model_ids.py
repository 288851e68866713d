"""Models given on the command line (``--model org/name``, ``--model ./checkpoint``) instead of in TOML.

Each value becomes what a ``[models.KEY]`` table holding only its source would be (the registered
default variants, the config's ``[gates]``), or selects the configured entry of the same source, so
its tuned limits apply. No pytest here: the plugin turns a :class:`ConfigError` into a usage error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypedDict

from quant_fixtures.config import ConfigError, ModelSpec, SuiteConfig
from quant_fixtures.names import KEY, derive_key, key_problem

# The Hub's rules for a repository id: letters, digits, '-', '_', '.'; no '--' or '..'; '-' and
# '.' neither start nor end a part; at most 96 characters. A revision may follow after '@'.
HUB_ID = re.compile(
    r"(?P<repo>[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?/"
    r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?)(?:@(?P<revision>[^\s@]+))?"
)
HUB_ID_MAX = 96


class ModelSource(TypedDict, total=False):
    """The source fields of a model entry a --model value gives: ``path``, or ``hub_id`` and ``revision``."""

    path: str
    hub_id: str
    revision: str | None


@dataclass(frozen=True)
class GivenModel:
    """One ``--model`` value and the model entry it stands for."""

    given: str  # as typed after --model
    spec: ModelSpec  # spec.key: the model's key in test ids, report file names and --models
    configured: bool  # True: the config's own entry (its gates, variants, requires_gpu) was selected

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def source_given(self) -> str:
        """The value without its ``KEY=``: what to give again under another key."""
        return split_key(self.given)[1]

    def describe(self, suite: SuiteConfig) -> str:
        """One line for the run's header: which key the model got and where its settings come from."""
        if self.configured:
            return f"--model {self.given}: model {self.key!r}, the entry configured in {suite.path}"
        variants = ",".join(suite.default_variant_keys(self.key))
        return (
            f"--model {self.given}: model {self.key!r} from {self.spec.source}; default variants {variants}, "
            f"limits from [gates] of {suite.path}"
        )


def split_key(value: str) -> tuple[str | None, str]:
    """(KEY, source) of a ``--model KEY=source`` value; (None, value) when it names no key."""
    head, sep, rest = value.partition("=")
    return (head, rest) if sep and KEY.fullmatch(head) else (None, value)


def _looks_like_path(source: str) -> bool:
    # A Hub id is exactly org/name (a revision after '@' may hold more); other separators mean a directory.
    return source.startswith(("/", ".", "~")) or "\\" in source or source.partition("@")[0].count("/") > 1


def source_of(value: str, source: str, base_dir: Path) -> ModelSource:
    """The source fields of a model entry (``path``, or ``hub_id`` and ``revision``). A directory
    that exists wins over a Hub id of the same spelling, as in transformers' from_pretrained; a
    relative one is taken from ``base_dir`` (where pytest was invoked)."""
    where = f"--model {value}"
    if not source.strip():
        raise ConfigError(f"{where}: no model given; expected a Hugging Face Hub id (org/name) or a directory")
    directory = base_dir / Path(source).expanduser()
    if directory.is_dir():
        if not (directory / "config.json").is_file():
            raise ConfigError(f"{where}: {directory} is not a Hugging Face checkpoint directory (no config.json)")
        return {"path": str(directory.resolve())}
    if _looks_like_path(source):
        raise ConfigError(f"{where}: no such directory {directory}")
    match = HUB_ID.fullmatch(source)
    repo = match.group("repo") if match else ""
    if not match or len(repo) > HUB_ID_MAX or "--" in repo or ".." in repo:
        raise ConfigError(
            f"{where}: expected a Hugging Face Hub id (org/name, optionally @revision) or a "
            "directory holding a Hugging Face checkpoint"
        )
    return {"hub_id": repo, "revision": match.group("revision")}


def _same_source(spec: ModelSpec, source: ModelSource, base_dir: Path) -> bool:
    hub_id = source.get("hub_id")
    if hub_id:
        return (
            spec.hub_id is not None
            and spec.hub_id.lower() == hub_id.lower()
            and (spec.revision or "main") == (source.get("revision") or "main")
        )
    path = source.get("path")
    return spec.path is not None and (base_dir / Path(spec.path).expanduser()).resolve() == Path(str(path))


def _given_model(suite: SuiteConfig, value: str, base_dir: Path) -> GivenModel:
    key, source = split_key(value)
    if key is None and source in suite.models:  # a configured key: select that entry
        return GivenModel(value, suite.models[source], configured=True)
    fields = source_of(value, source, base_dir)
    if key is None:
        same = next((s for s in suite.models.values() if _same_source(s, fields, base_dir)), None)
        if same is not None:
            return GivenModel(value, same, configured=True)
        hub_id, path = fields.get("hub_id"), fields.get("path")
        key = derive_key(hub_id.split("/")[-1] if hub_id else Path(str(path)).name)
        if not key:
            raise ConfigError(f"--model {value}: no model key can be made from it; name one: --model KEY={value}")
    problem = key_problem("model", key)
    if problem is not None:
        raise ConfigError(f"--model {value}: {problem}; name it yourself: --model KEY={source}")
    clash = next((k for k in suite.models if k.lower() == key.lower() and k != key), None)
    if clash is not None:
        raise ConfigError(
            f"--model {value}: its key {key!r} differs only in case from the model {clash!r} in {suite.path} "
            f"(one report file on a case-insensitive file system); give it another key: --model OTHER_KEY={source}"
        )
    existing = suite.models.get(key)
    if existing is not None:
        if _same_source(existing, fields, base_dir):
            return GivenModel(value, existing, configured=True)
        raise ConfigError(
            f"--model {value}: its key {key!r} is already the model from {existing.source} in "
            f"{suite.path}; give this one another key: --model OTHER_KEY={source}"
        )
    return GivenModel(value, ModelSpec(key=key, **fields), configured=False)


def add_given_models(suite: SuiteConfig, values: list[str], base_dir: Path) -> tuple[SuiteConfig, list[GivenModel]]:
    """The suite with the models of ``values`` added, and what each value became (in order, each
    model once). Errors are one line naming the value."""
    given: list[GivenModel] = []
    for value in values:
        model = _given_model(suite, value, base_dir)
        earlier = next((g for g in given if g.key.lower() == model.key.lower()), None)
        if earlier is None:
            given.append(model)
        elif earlier.spec != model.spec:
            keys = (
                f"both make the model key {model.key!r}"
                if earlier.key == model.key
                else f"make the model keys {earlier.key!r} and {model.key!r}, which differ only in case "
                "(one report file on a case-insensitive file system)"
            )
            raise ConfigError(
                f"--model {earlier.given} and --model {value} {keys}; "
                f"give one another key: --model OTHER_KEY={model.source_given}"
            )
    added = {g.key: g.spec for g in given if not g.configured}
    return replace(suite, models={**suite.models, **added}), given
