"""The harm snapshot (plugin/snapshot_extension.tolerant_snapshot, which the ``harm_snapshot`` fixture's
HarmSnapshot builds for each file it compares): one file per settings tag and hardware kind, tolerant
comparison, and the snapshots of other settings neither reported unused nor deleted by ``--snapshot-update``.

It reaches syrupy's session through a private name (``config._syrupy``), so syrupy is pinned in
pyproject.toml; these tests run syrupy itself (pytester) and fail, with the reason, on a syrupy that
breaks what the plugin relies on, or that no longer needs the private name."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import pytest
from packaging.requirements import Requirement

from quant_fixtures.plugin.snapshot_extension import SYRUPY_SESSION_ATTRIBUTE, syrupy_session

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
TOL = {"kl_mean": {"rel": 0.02, "abs": 5e-4}}

# The settings tag and the measured value come from the environment, as the settings come from the
# command line in the real fixture.
TEST_FILE = """
import os

import pytest

from quant_fixtures.plugin.snapshot_extension import tolerant_snapshot


@pytest.fixture
def harm_snapshot(request):
    return tolerant_snapshot(request, {tol!r}, os.environ["TAG"])


@pytest.mark.parametrize("model", ["tiny"])
def test_summary(model, harm_snapshot):
    assert {{"variants": {{"int8": {{"kl_mean": float(os.environ["KL"])}}}}}} == harm_snapshot
"""

# The same through syrupy's public route: its ``snapshot`` fixture and ``use_extension``.
PUBLIC_FILE = """
import os

import pytest
from syrupy.extensions.json import JSONSnapshotExtension

from quant_fixtures.plugin.snapshot_extension import tolerant_json_extension


@pytest.fixture
def harm_snapshot(snapshot):
    tag = os.environ["TAG"]
    own = JSONSnapshotExtension.get_snapshot_name(test_location=snapshot.test_location, index=tag)
    return snapshot.use_extension(tolerant_json_extension({tol!r}, [own]))(name=tag)


@pytest.mark.parametrize("model", ["tiny"])
def test_summary(model, harm_snapshot):
    assert {{"variants": {{"int8": {{"kl_mean": float(os.environ["KL"])}}}}}} == harm_snapshot
"""


def _run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tag: str, kl: float, *args: str
) -> pytest.RunResult:
    monkeypatch.setenv("TAG", tag)
    # The inner run is not an xdist worker, even when this test runs in one (syrupy acts on it).
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KL", repr(kl))
    # The suite's own plugin is not needed here (and would import torch inside the inner run).
    return pytester.runpytest("-p", "no:quant_fixtures", *args)


def _snapshots(pytester: pytest.Pytester) -> list[str]:
    folder = pytester.path / "__snapshots__" / "test_snap"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_each_settings_tag_keeps_its_own_file_through_updates(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_snap=TEST_FILE.format(tol=TOL))
    missing = _run(pytester, monkeypatch, "cpu-a", 0.1)
    assert missing.ret == pytest.ExitCode.TESTS_FAILED, "a missing snapshot must fail"
    assert _run(pytester, monkeypatch, "cpu-a", 0.1, "--snapshot-update").ret == 0
    assert _run(pytester, monkeypatch, "cpu-b", 0.3, "--snapshot-update").ret == 0
    assert _snapshots(pytester) == ["test_summary[tiny][cpu-a].json", "test_summary[tiny][cpu-b].json"]
    # Each tag compares with its own file, within the tolerance, and no file is reported unused.
    for tag, kl in (("cpu-a", 0.1004), ("cpu-b", 0.3)):
        result = _run(pytester, monkeypatch, tag, kl)
        assert result.ret == 0, result.stdout.str()
        assert "unused" not in result.stdout.str()
    assert _run(pytester, monkeypatch, "cpu-a", 0.2).ret == pytest.ExitCode.TESTS_FAILED  # outside the tolerance
    assert _run(pytester, monkeypatch, "cpu-b", 0.1).ret == pytest.ExitCode.TESTS_FAILED  # b's value is b's
    # A deliberate change, accepted, rewrites only that tag's file.
    before = (pytester.path / "__snapshots__" / "test_snap" / "test_summary[tiny][cpu-b].json").read_text()
    assert _run(pytester, monkeypatch, "cpu-a", 0.2, "--snapshot-update").ret == 0
    assert _snapshots(pytester) == ["test_summary[tiny][cpu-a].json", "test_summary[tiny][cpu-b].json"]
    assert (pytester.path / "__snapshots__" / "test_snap" / "test_summary[tiny][cpu-b].json").read_text() == before
    assert _run(pytester, monkeypatch, "cpu-a", 0.2).ret == 0


def test_syrupy_public_route_still_deletes_the_other_settings(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the private name: through syrupy's ``snapshot`` fixture, with the same extension, the
    default extension's discovery takes the other tag's file for an unknown collection and deletes
    it. When this test fails, syrupy no longer does that: build harm_snapshot with
    ``snapshot.use_extension`` (PUBLIC_FILE above) and drop the pin."""
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_snap=PUBLIC_FILE.format(tol=TOL))
    assert _run(pytester, monkeypatch, "cpu-a", 0.1, "--snapshot-update").ret == 0
    result = _run(pytester, monkeypatch, "cpu-b", 0.3, "--snapshot-update")
    assert result.ret == 0
    assert _snapshots(pytester) == ["test_summary[tiny][cpu-b].json"], result.stdout.str()


def test_syrupy_is_pinned_to_a_version_checked_here() -> None:
    """pyproject.toml pins syrupy (an upper bound: a later release may move its private names) and
    the installed one is within the pin."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    [pin] = [Requirement(d) for d in dependencies if re.match(r"syrupy\b", d)]
    assert any(s.operator in ("<", "<=", "==", "~=") for s in pin.specifier), (
        f"pyproject.toml requires {pin}: pin syrupy (an upper bound), the harm snapshot uses its private "
        f"config.{SYRUPY_SESSION_ATTRIBUTE}"
    )
    installed = version("syrupy")
    assert pin.specifier.contains(installed, prereleases=True), (
        f"syrupy {installed} is installed, pyproject.toml pins {pin}: install the pinned one, or check this "
        "version with tests/unit/test_snapshot_fixture.py and widen the pin"
    )


def test_syrupy_keeps_its_session_where_the_plugin_reads_it(pytestconfig: pytest.Config) -> None:
    from syrupy.session import SnapshotSession

    assert isinstance(syrupy_session(pytestconfig), SnapshotSession)
    with pytest.raises(RuntimeError, match=r"syrupy \S+ keeps no SnapshotSession in config\._syrupy.*pins"):
        syrupy_session(SimpleNamespace())  # type: ignore[arg-type]  # a config without syrupy's session


# One harm snapshot per hardware kind (plugin/snapshot_extension.HarmSnapshot with
# plugin/assertions.assert_harm_snapshot, as tests/harm/test_snapshots.py uses them). The kind comes
# from the summary's environment, set here from VENDOR; RECORD is the reproduction record.
KIND_FILE = """
import json
import os

import pytest

from quant_fixtures.plugin.assertions import assert_harm_snapshot
from quant_fixtures.plugin.snapshot_extension import HarmSnapshot


@pytest.fixture
def harm_snapshot(request):
    return HarmSnapshot(request, {tol!r}, "cpu-tag")


@pytest.mark.parametrize("model", ["tiny"])
def test_summary(model, harm_snapshot, pytestconfig):
    summary = {{
        "variants": {{"int8": {{"kl_mean": float(os.environ["KL"])}}}},
        "reproduction": json.loads(os.environ["RECORD"]),
        "environment": {{
            "device_type": "cpu",
            "cpu_vendor": os.environ["VENDOR"],
            "cpu_isa": "avx2,avx512f",
            "cpu_capability": "AVX2",
        }},
    }}
    assert_harm_snapshot(summary, harm_snapshot, pytestconfig)
"""
NO_ACROSS = {"spread": {"int8": {"kl_mean": 0.0}}}
ACROSS = {**NO_ACROSS, "across_kinds": {"runs": ["native"], "spread": {"int8": {"kl_mean": 0.01}}}}
AMD = "test_summary[tiny][cpu-tag@amd-avx2+avx512f-kernels-avx2].json"
INTEL = "test_summary[tiny][cpu-tag@intel-avx2+avx512f-kernels-avx2].json"


def _run_kind(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, vendor: str, kl: float, record: dict, *args: str
) -> pytest.RunResult:
    import json

    monkeypatch.setenv("VENDOR", vendor)
    monkeypatch.setenv("RECORD", json.dumps(record))
    return _run(pytester, monkeypatch, "unused", kl, *args)


def _agrees(result: pytest.RunResult) -> bool:
    """syrupy's summary line says what the test's outcome says."""
    out = result.stdout.str()
    if result.ret == 0:
        return "1 snapshot passed" in out and "failed" not in out
    return "snapshot failed" in out or "snapshots failed" in out or "no snapshot" in out


def test_each_hardware_kind_has_its_own_snapshot_and_other_kinds_compare_across_kinds(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_snap=KIND_FILE.format(tol=TOL))
    missing = _run_kind(pytester, monkeypatch, "amd", 0.1, NO_ACROSS)
    assert missing.ret == pytest.ExitCode.TESTS_FAILED and "on any hardware kind" in missing.stdout.str()
    assert _run_kind(pytester, monkeypatch, "amd", 0.1, NO_ACROSS, "--snapshot-update").ret == 0
    assert _snapshots(pytester) == [AMD]
    same = _run_kind(pytester, monkeypatch, "amd", 0.1004, NO_ACROSS)
    assert same.ret == 0 and _agrees(same), same.stdout.str()
    # Another kind, and the record measured nothing across kinds: a failure that says so, not a skip.
    unmeasured = _run_kind(pytester, monkeypatch, "intel", 0.1, NO_ACROSS)
    assert unmeasured.ret == pytest.ExitCode.TESTS_FAILED
    assert "measured no spread across kinds" in unmeasured.stdout.str()
    assert "skipped" not in unmeasured.stdout.str()
    # The record re-measured across kinds: --snapshot-update stores it although the numbers match.
    assert _run_kind(pytester, monkeypatch, "amd", 0.1, ACROSS, "--snapshot-update").ret == 0
    assert '"across_kinds"' in (pytester.path / "__snapshots__" / "test_snap" / AMD).read_text()
    # Another kind compares at 2 x the spread across kinds (0.02), and says which snapshot it used.
    within = _run_kind(pytester, monkeypatch, "intel", 0.115, ACROSS)
    assert within.ret == 0 and _agrees(within), within.stdout.str()
    assert "compared with the one made on amd-avx2+avx512f-kernels-avx2" in within.stdout.str()
    beyond = _run_kind(pytester, monkeypatch, "intel", 0.15, ACROSS)
    assert beyond.ret == pytest.ExitCode.TESTS_FAILED and _agrees(beyond), beyond.stdout.str()
    assert "tolerance measured across kinds" in beyond.stdout.str()
    # The same 15 % move on the snapshot's own kind fails; 0.115 does too (tight tolerance 0.002).
    assert _run_kind(pytester, monkeypatch, "amd", 0.115, ACROSS).ret == pytest.ExitCode.TESTS_FAILED
    # Recording the other kind adds its file and leaves the first as it was.
    before = (pytester.path / "__snapshots__" / "test_snap" / AMD).read_text()
    assert _run_kind(pytester, monkeypatch, "intel", 0.115, ACROSS, "--snapshot-update").ret == 0
    assert _snapshots(pytester) == [AMD, INTEL]
    assert (pytester.path / "__snapshots__" / "test_snap" / AMD).read_text() == before
    assert _run_kind(pytester, monkeypatch, "intel", 0.115, ACROSS).ret == 0
    # A third kind compares with both: within 0.02 of 0.1 and of 0.115 passes, beyond either fails.
    third = _run_kind(pytester, monkeypatch, "zhaoxin", 0.11, ACROSS)
    assert third.ret == 0 and "2 snapshots passed" in third.stdout.str(), third.stdout.str()
    assert _run_kind(pytester, monkeypatch, "zhaoxin", 0.125, ACROSS).ret == pytest.ExitCode.TESTS_FAILED
