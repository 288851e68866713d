"""The root conftest.py's shortcut: `pytest -m gpu` without paths imports only the GPU test folders,
and any collection that meets a `gpu` test elsewhere fails, so the shortcut never drops one. Run on a
copy of conftest.py in a project of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest((ROOT / "conftest.py").read_text())
    pytester.makeini("[pytest]\ntestpaths = tests\nmarkers =\n    gpu: needs a GPU\n")
    (pytester.path / "tests" / "gpu").mkdir(parents=True)
    (pytester.path / "tests" / "unit").mkdir()
    (pytester.path / "tests" / "gpu" / "test_on_gpu.py").write_text(
        "import pytest\n\n@pytest.mark.gpu\ndef test_reads() -> None:\n    pass\n"
    )
    (pytester.path / "tests" / "unit" / "test_cpu.py").write_text(
        "import slow_import_marker  # noqa: F401  (fails if this module is imported)\n\n"
        "def test_cpu() -> None:\n    pass\n"
    )
    return pytester


def test_gpu_runs_skip_the_other_folders(project: pytest.Pytester) -> None:
    result = project.runpytest("-p", "no:cacheprovider", "-m", "gpu", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    assert [line for line in result.outlines if "::" in line] == ["tests/gpu/test_on_gpu.py::test_reads"]


def test_paths_on_the_command_line_are_collected_as_asked(project: pytest.Pytester) -> None:
    result = project.runpytest("-p", "no:cacheprovider", "-m", "gpu", "--collect-only", "-q", "tests/unit")
    assert result.ret == pytest.ExitCode.INTERRUPTED  # tests/unit was imported: its import fails
    result.stdout.fnmatch_lines(["*No module named 'slow_import_marker'*"])


def test_a_gpu_test_outside_the_gpu_folders_fails_every_collection(project: pytest.Pytester) -> None:
    (project.path / "tests" / "unit" / "test_cpu.py").write_text(
        "import pytest\n\n@pytest.mark.gpu\ndef test_hidden() -> None:\n    pass\n"
    )
    for args in ((), ("-m", "not gpu")):
        result = project.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", *args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(
            ["*1 test(s) marked gpu outside tests/{gpu,harm}*tests/unit/test_cpu.py::test_hidden*"]
        )
