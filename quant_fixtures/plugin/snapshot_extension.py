"""The syrupy extension of the harm snapshot: JSON stored exactly, compared with tolerances, one
file per run settings and hardware kind (``<settings>@<kind>``, report/snapshot.hardware_kind).

syrupy's public extension points carry most of it (an extension subclass overriding ``matches`` and
``owns_snapshot_collection``; ``get_snapshot_name`` for the file it writes). One private name is
needed: the run's ``SnapshotSession`` (``config._syrupy``), to build the assertion without syrupy's
``snapshot`` fixture. That fixture registers the default (amber) extension, whose discovery is
scoped to the whole ``__snapshots__/`` folder and reports every file it does not own -- the JSON
snapshots of other settings -- as an unknown collection, so ``--snapshot-update`` deletes them.
pyproject.toml therefore pins syrupy to the versions checked; tests/unit/test_snapshot_fixture.py
checks the pin, the private name, the behaviour, and that the public route still deletes (when it
stops doing so, switch to ``snapshot.use_extension``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib.metadata import version
from pathlib import Path

import pytest
from syrupy.assertion import SnapshotAssertion
from syrupy.extensions.json import JSONSnapshotExtension
from syrupy.location import PyTestLocation
from syrupy.session import SnapshotSession

from quant_fixtures.report.snapshot import within_tolerance

SYRUPY_SESSION_ATTRIBUTE = "_syrupy"  # set on pytest's config by syrupy's pytest_sessionstart


def _tolerance_sources(summary: object) -> tuple[object, object]:
    """What a summary's tolerances come from (never compared as numbers): record and allowed moves."""
    from quant_fixtures.report.snapshot import REPRODUCTION, TOLERANCES

    return (summary.get(REPRODUCTION), summary.get(TOLERANCES)) if isinstance(summary, dict) else (None, None)


def tolerant_json_extension(
    tolerances: dict[str, dict[str, float]],
    owned_stems: Iterable[str] | None = None,
    across_kinds: bool = False,
    rerecord_changed_tolerances: bool = False,
) -> type[JSONSnapshotExtension]:
    """A JSON snapshot extension class bound to these tolerances (syrupy instantiates the class);
    with ``across_kinds``, for a snapshot made on another kind of hardware (the tolerance measured
    across kinds). With ``rerecord_changed_tolerances`` (--snapshot-update), a snapshot whose
    reproduction record or allowed moves differ from this run's does not match, so it is rewritten.

    With ``owned_stems``, the extension claims only those snapshot files: snapshots made with
    other settings, models or variants are invisible to this run, so `--snapshot-update` never
    deletes them as unused."""
    owned = None if owned_stems is None else set(owned_stems)

    class TolerantJSONExtension(JSONSnapshotExtension):
        def matches(self, *, serialized_data: object, snapshot_data: object) -> bool:
            if not isinstance(serialized_data, (str, bytes)) or not isinstance(snapshot_data, (str, bytes)):
                return False  # no snapshot yet
            try:
                new, old = json.loads(serialized_data), json.loads(snapshot_data)
                if rerecord_changed_tolerances and _tolerance_sources(new) != _tolerance_sources(old):
                    return False  # --snapshot-update stores a re-measured reproduction record
                return within_tolerance(new, old, tolerances, across_kinds)
            except (TypeError, ValueError):  # not JSON, or no spread across kinds to compare with
                return False

        def owns_snapshot_collection(self, *, filepath: str, test_location: PyTestLocation) -> bool:
            if owned is not None and Path(filepath).name.removesuffix(".json") not in owned:
                return False
            return super().owns_snapshot_collection(filepath=filepath, test_location=test_location)

    return TolerantJSONExtension


def syrupy_session(config: pytest.Config) -> SnapshotSession:
    """syrupy's session of this run (private in syrupy: see the module's docstring)."""
    session = getattr(config, SYRUPY_SESSION_ATTRIBUTE, None)
    if not isinstance(session, SnapshotSession):
        raise RuntimeError(
            f"syrupy {version('syrupy')} keeps no SnapshotSession in config.{SYRUPY_SESSION_ATTRIBUTE}, "
            "which the harm snapshot needs: install the syrupy version pyproject.toml pins"
            + ("" if session is not None else " (or syrupy is disabled: -p no:syrupy)")
        )
    return session


def tolerant_snapshot(
    request: pytest.FixtureRequest, tolerances: dict[str, dict[str, float]], name: str, across_kinds: bool = False
) -> SnapshotAssertion:
    """A syrupy snapshot assertion for the requesting test with the tolerant extension, stored under
    ``name`` (the file ``__snapshots__/<module>/<test id>[<name>].json``). The extension claims only
    that one file, so the snapshots of other names (other settings) are never discovered, hence never
    reported or deleted as unused."""
    item = request.node
    if not isinstance(item, pytest.Item):
        raise TypeError(f"a snapshot belongs to a test, not to {item!r}")
    location = PyTestLocation(item)
    own = JSONSnapshotExtension.get_snapshot_name(test_location=location, index=name)
    options = request.config.option
    assertion = SnapshotAssertion(  # as syrupy's own ``snapshot`` fixture builds it, with this extension
        update_snapshots=options.update_snapshots,
        update_new_snapshots_only=options.update_new_snapshots_only,
        extension_class=tolerant_json_extension(tolerances, [own], across_kinds, bool(options.update_snapshots)),
        test_location=location,
        session=syrupy_session(request.config),
    )
    return assertion(name=name)


KIND_SEPARATOR = "@"  # <settings tag>@<hardware kind>: the index of a harm snapshot's file


class HarmSnapshot:
    """The harm snapshots of one test and run settings: one file per hardware kind.

    ``assertions(kind)`` gives what this run compares with: the snapshot of its own kind (or, with
    --snapshot-update, the one it records); where its kind has none, every snapshot of the same
    settings made on another kind, to be compared with the tolerance measured across kinds."""

    def __init__(self, request: pytest.FixtureRequest, tolerances: dict[str, dict[str, float]], settings: str):
        if not isinstance(request.node, pytest.Item):
            raise TypeError(f"a snapshot belongs to a test, not to {request.node!r}")
        self.request, self.tolerances, self.settings = request, tolerances, settings
        self.location = PyTestLocation(request.node)

    def name(self, kind: str) -> str:
        return f"{self.settings}{KIND_SEPARATOR}{kind}"

    def path(self, kind: str) -> Path:
        return Path(JSONSnapshotExtension.get_location(test_location=self.location, index=self.name(kind)))

    def kinds(self) -> list[str]:
        """The hardware kinds that have a snapshot of these settings, sorted."""
        stem = JSONSnapshotExtension.get_snapshot_name(test_location=self.location, index=self.name(""))
        prefix = stem.removesuffix("]")  # "<test>[<settings>@"
        folder = Path(JSONSnapshotExtension.dirname(test_location=self.location))
        return sorted(
            p.stem[len(prefix) : -1]
            for p in (folder.glob("*.json") if folder.is_dir() else [])
            if p.stem.startswith(prefix) and p.stem.endswith("]") and len(p.stem) > len(prefix) + 1
        )

    def assertion(self, kind: str, across_kinds: bool) -> SnapshotAssertion:
        return tolerant_snapshot(self.request, self.tolerances, self.name(kind), across_kinds)

    def targets(self, kind: str) -> list[tuple[str, bool]]:
        """(kind of the snapshot, compared across kinds) for each snapshot this run compares with."""
        updating = bool(self.request.config.option.update_snapshots)
        if updating or self.path(kind).is_file():
            return [(kind, False)]
        others = self.kinds()
        return [(other, True) for other in others] if others else [(kind, False)]


def unreadable_snapshot(test_modules: Iterable[Path]) -> str | None:
    """One line naming the first JSON snapshot of these test modules that does not parse, or None:
    checked before anything runs, so a damaged file costs no evaluation."""
    for module in sorted(set(test_modules)):
        folder = module.parent / "__snapshots__" / module.stem
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                return (
                    f"snapshot {path}: not readable JSON ({exc}); restore it (git checkout -- '{path}') or "
                    "delete it and record it again with --snapshot-update"
                )
    return None
