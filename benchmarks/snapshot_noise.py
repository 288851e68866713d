"""Measure the reproduction noise of a harm snapshot: the same evaluation run cold several times in
other environments, and how far each snapshot number moves between them.

    python benchmarks/snapshot_noise.py [--out tests/harm/reproduction] [--work DIR] -- PYTEST_ARGS...

PYTEST_ARGS select the snapshot's settings exactly as the snapshot run gives them (for CI's:
`make snapshot-noise`). Each configuration runs tests/harm/test_release_gates.py in a fresh process
with its own empty cache and baselines (as another machine would: FP16 references are recomputed
there too): the arguments as given; other batch sizes; and on the CPU, one thread. (CPU kernels
are pinned to AVX2 on every x86-64 CPU, cpu_kernels.py, so the instruction set is not a source of
noise.) On the CPU one more run stands for a processor of another kind: the CPU's own kernels
(QUANT_FIXTURES_CPU_KERNELS=native: AVX512 where the CPU has it, and LLM.int8 through torch._int_mm
instead of a float matmul). Its moves are recorded apart, as the spread across kinds, which a
snapshot comparison on a machine of a kind with no snapshot of its own allows (docs/SNAPSHOTS.md,
docs/CI.md).
The record (report/reproduction.py) goes to OUT/<model>[<settings>].json, one per model; the next
`pytest --snapshot-update` with the same settings stores it in the snapshot, whose comparison then
allows twice the measured spread (never less than [snapshot_tolerances]).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quant_fixtures import cpu_kernels  # noqa: E402
from quant_fixtures.report.reproduction import documents_of, measure, write_record  # noqa: E402
from quant_fixtures.settings import RunSettings  # noqa: E402

BATCH_OPTIONS = ("--batch-size", "--gen-batch-size")


def without_options(args: list[str], names: tuple[str, ...]) -> list[str]:
    """``args`` less the named options and their values (``--x 1`` and ``--x=1``)."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not arg.startswith(tuple(f"{n}=" for n in names)):
            kept.append(arg)
    return kept


OTHER_KIND = "native-kernels"  # the run that stands for another kind of processor


def configurations(args: list[str], cuda: bool) -> dict[str, tuple[list[str], dict[str, str]]]:
    """label -> (pytest arguments, environment additions)."""
    other_batches = [*without_options(args, BATCH_OPTIONS), "--batch-size=2", "--gen-batch-size=12"]
    runs: dict[str, tuple[list[str], dict[str, str]]] = {"as-given": (args, {}), "other-batches": (other_batches, {})}
    if not cuda:
        runs["one-thread"] = (args, {"OMP_NUM_THREADS": "1"})
        runs[OTHER_KIND] = (args, {cpu_kernels.MODE_ENV: "native"})
    return runs


def snapshot_settings(args: list[str]) -> RunSettings:
    """The run settings these pytest arguments give (collected in-process, nothing evaluated)."""
    import pytest

    from quant_fixtures.plugin.cli import settings_of

    class Grab:
        settings: RunSettings | None = None

        def pytest_collection_finish(self, session: pytest.Session) -> None:
            Grab.settings = settings_of(session.config)

    code = pytest.main(
        [
            str(ROOT / "tests" / "harm" / "test_release_gates.py"),
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            *args,
        ],
        plugins=[Grab()],
    )
    if code != 0 or Grab.settings is None:
        raise SystemExit(f"snapshot-noise: the pytest arguments do not collect (exit {code})")
    return Grab.settings


def run_one(label: str, args: list[str], env_extra: dict[str, str], work: Path) -> Path:
    results = work / label / "results"
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(ROOT / "tests" / "harm" / "test_release_gates.py"),
        "-q",
        "-p",
        "no:cacheprovider",
        "--gate-mode=report",
        f"--results-dir={results}",
        f"--baselines-dir={work / label / 'baselines'}",
        f"--cache-dir={work / label / 'cache'}",
        *args,
    ]
    env = {**os.environ, **env_extra}
    if env_extra.get(cpu_kernels.MODE_ENV) == "native":  # this process pinned them (collecting): unpin
        for name, value in cpu_kernels.AVX2_SWITCHES.items():
            if env.get(name) == value:
                del env[name]
    print(
        f"snapshot-noise: {label}: {' '.join(f'{k}={v}' for k, v in env_extra.items())} {' '.join(command[3:])}",
        flush=True,
    )
    done = subprocess.run(command, cwd=ROOT, env=env)
    if done.returncode not in (0, 1):  # 1: a gate or test failed, the documents are still written
        raise SystemExit(f"snapshot-noise: run {label} ended with exit {done.returncode}")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "harm" / "reproduction")
    parser.add_argument("--work", type=Path, default=None, help="where the runs write (default: a temp dir)")
    parser.add_argument("pytest_args", nargs="*", help="after --: the snapshot run's pytest options")
    args = parser.parse_args()
    import torch

    from quant_fixtures.report.snapshot import settings_tag

    cuda = torch.cuda.is_available() and "--device=cpu" not in args.pytest_args
    settings = snapshot_settings(args.pytest_args)
    tag = settings_tag(settings)
    work = args.work or Path(tempfile.mkdtemp(prefix="snapshot-noise-"))
    results = {
        label: run_one(label, run_args, env, work)
        for label, (run_args, env) in configurations(args.pytest_args, cuda).items()
    }
    measured = [m for m in settings.models if any(Path(results["as-given"]).glob(f"*_quantized_{m}_evaluation.json"))]
    if not measured:
        raise SystemExit(f"snapshot-noise: no evaluation document in {results['as-given']}: nothing ran")
    for model in measured:
        runs = {label: documents_of(directory, model) for label, directory in results.items()}
        descriptions = {
            label: " ".join([*(f"{k}={v}" for k, v in env.items()), *run_args])
            for label, (run_args, env) in configurations(args.pytest_args, cuda).items()
        }
        record = measure(model, runs, tag, descriptions, other_kinds={OTHER_KIND} & set(runs))
        path = write_record(args.out, record)
        print(f"snapshot-noise: {model}: wrote {path}")
        for variant, spread in record["spread"].items():
            print(f"  {variant:10s} " + "  ".join(f"{m} {v:.3g}" for m, v in spread.items()))
        across = record.get("across_kinds")
        for variant, spread in (across["spread"] if across else {}).items():
            print(f"  {variant:10s} across kinds: " + "  ".join(f"{m} {v:.3g}" for m, v in spread.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
