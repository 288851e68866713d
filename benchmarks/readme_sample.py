"""README's `make eval` sample output, checked against a real run's reports or rewritten from them.

    make eval                                            # a real run: results/ holds its reports
    python benchmarks/readme_sample.py results/          # exit 1 listing the lines that differ
    python benchmarks/readme_sample.py results/ --write  # put the run's lines into README.md

The lines are rendered from the run's evaluation documents by the code that prints them at the end
of a run (the harm table of report/terminal.py, the release verdict of report/release.py, with the
tail `--gate-mode report` adds), so the sample shows what this version prints, numbers included.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# What the plugin appends to the verdict line in --gate-mode report (plugin/hooks.py), as make eval runs.
REPORT_MODE_TAIL = "; --gate-mode report: the exit code does not follow it"
FENCE = "```"


def run_lines(results_dir: Path) -> list[str]:
    """The summary lines a run into ``results_dir`` printed: harm tables, long-context lines, verdict."""
    from quant_fixtures.report.merge import merge_documents
    from quant_fixtures.report.release import release_lines, release_verdict
    from quant_fixtures.report.terminal import summary_lines

    documents = merge_documents([results_dir])
    if not documents:
        raise SystemExit(f"readme_sample: no evaluation documents in {results_dir}")
    verdict = release_lines(release_verdict(documents))
    verdict[0] += REPORT_MODE_TAIL
    return [line for line in summary_lines(documents) if line] + verdict


def sample_span(text: str) -> tuple[int, int]:
    """Start and end offsets of the sample's lines: the fenced block whose first line is the
    settings line (`device ...`)."""
    start = text.find(f"{FENCE}\ndevice ")
    if start < 0:
        raise SystemExit("readme_sample: README.md has no sample block (a fenced block starting 'device ')")
    start += len(FENCE) + 1
    return start, text.index(f"\n{FENCE}\n", start) + 1


def sample_lines(text: str) -> list[str]:
    start, end = sample_span(text)
    return text[start:end].splitlines()


def differences(shown: list[str], printed: list[str]) -> list[str]:
    """One line per sample line that is not what the run printed, then the lines missing or extra."""
    out = [f"line {i + 1}:\n  README: {a}\n  run:    {b}" for i, (a, b) in enumerate(zip(shown, printed)) if a != b]
    out += [f"only in README: {line}" for line in shown[len(printed) :]]
    out += [f"only in the run: {line}" for line in printed[len(shown) :]]
    return out


def with_sample(text: str, printed: list[str]) -> str:
    start, end = sample_span(text)
    return text[:start] + "".join(f"{line}\n" for line in printed) + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", type=Path, help="the results directory of a make eval run")
    parser.add_argument("--write", action="store_true", help="replace README's sample with the run's lines")
    parser.add_argument("--readme", type=Path, default=README, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    printed = run_lines(args.results_dir)
    if args.write:
        args.readme.write_text(with_sample(text, printed), encoding="utf-8")
        return 0
    found = differences(sample_lines(text), printed)
    for line in found:
        print(line)
    if found:
        print(f"README's sample is not what the run in {args.results_dir} printed (--write takes the run's lines)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
