"""Merge the results directories of several jobs (a CI matrix: one job per model, or per model and
variant) into one: every evaluation document, one comparison file per model, REPORT.md.

    quant-harm-merge --into results/ job-a/results job-b/results ...
    python -m quant_fixtures.report.merge --into results/ job-a/results job-b/results

Documents of one model are compared only when they were measured against the same FP16 references
(same reference keys: weights, tokenizer, data, protocol, prompts, numerics environment); if two
jobs disagree the merge stops and says which. The same (model, variant) from several jobs (every job
measures FP16 first) is kept once when the copies agree on the references.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from quant_fixtures.config import DEFAULT_UNDECIDED, UNDECIDED_POLICIES
from quant_fixtures.metrics.decision import JointVerdict
from quant_fixtures.names import case_clash, key_problem
from quant_fixtures.report.comparison import comparison_document, comparison_path, evaluation_path, variant_order
from quant_fixtures.report.release import fails_the_run, release_lines, release_verdict
from quant_fixtures.report.schema import EvaluationDocument, SchemaError, read_document, write_document


class MergeError(ValueError):
    """The directories cannot be merged; the message says which file or model and why."""


def read_results(directory: Path) -> list[tuple[Path, EvaluationDocument]]:
    """Every evaluation document in ``directory``; one that does not read is an error (a merge
    that silently dropped a job's result would compare less than it claims)."""
    if not Path(directory).is_dir():
        raise MergeError(f"{directory}: not a directory")
    paths = sorted(Path(directory).glob("*_quantized_*_evaluation.json"))
    if not paths:
        raise MergeError(f"{directory}: no *_quantized_*_evaluation.json in it")
    found = []
    for path in paths:
        try:
            doc = read_document(EvaluationDocument, path)
        except SchemaError as exc:
            raise MergeError(str(exc)) from None
        _check_keys(path, doc)
        found.append((path, doc))
    return found


def _check_keys(path: Path, doc: EvaluationDocument) -> None:
    """The merge writes files named by the document's keys: they follow the run's key rule."""
    for kind, key in (("model", doc.model.key), ("variant", doc.variant.key)):
        problem = key_problem(kind, key)
        if problem is not None:
            raise MergeError(f"{path}: {problem}")


def merge_documents(directories: list[Path]) -> dict[str, dict[str, EvaluationDocument]]:
    """{model: {variant: document}} over all directories, variants in report order."""
    merged: dict[str, dict[str, tuple[Path, EvaluationDocument]]] = {}
    for directory in directories:
        for path, doc in read_results(directory):
            model = merged.setdefault(doc.model.key, {})
            for other_path, other in model.values():
                if other.reference_keys != doc.reference_keys:
                    raise MergeError(
                        f"model {doc.model.key}: {path} and {other_path} were measured against different FP16 "
                        f"references ({_differing(other.reference_keys, doc.reference_keys)}): run the jobs with "
                        "the same settings on the same kind of machine"
                    )
                break
            model.setdefault(doc.variant.key, (path, doc))  # a repeated pair (FP16 in every job): first kept
    clash = case_clash(merged)
    if clash is not None:
        raise MergeError(
            f"models {clash[0]!r} and {clash[1]!r} differ only in case: merged into one directory, their files "
            "would be one on a case-insensitive file system; rename one in its job's config"
        )
    return {
        m: {key: pair[1] for key, pair in sorted(by_variant.items(), key=lambda kv: variant_order(kv[0]))}
        for m, by_variant in merged.items()
    }


def _differing(a: dict[str, str | None], b: dict[str, str | None]) -> str:
    return ", ".join(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)) or "keys"


def merge(directories: list[Path], into: Path) -> tuple[dict[str, dict[str, EvaluationDocument]], JointVerdict]:
    """Write the merged documents, comparison files and REPORT.md into ``into``; the documents and
    the release verdict over every job's gates together (Holm over all of them)."""
    from quant_fixtures.report.markdown import write_report

    documents = merge_documents(directories)
    verdict = release_verdict(documents)
    for model, by_variant in documents.items():
        for variant_key, doc in by_variant.items():
            write_document(evaluation_path(into, model, variant_key), doc)
        comparison = comparison_document(by_variant)
        comparison.release_verdict = verdict
        write_document(comparison_path(into, model), comparison)
    write_report(into, documents, verdict)
    return documents, verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quant-harm-merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--into", required=True, type=Path, help="the merged results directory")
    parser.add_argument(
        "--undecided",
        choices=UNDECIDED_POLICIES,
        default=DEFAULT_UNDECIDED,
        help="what an UNDECIDED release verdict does to the exit code (default: %(default)s)",
    )
    parser.add_argument("directories", nargs="+", type=Path, help="results directories of the jobs")
    args = parser.parse_args(argv)
    from quant_fixtures.report.terminal import summary_lines

    try:
        documents, verdict = merge(args.directories, args.into)
    except MergeError as exc:
        print(f"quant-harm-merge: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(documents)))
    print(
        f"merged {sum(len(v) for v in documents.values())} documents into {args.into} (read {args.into / 'REPORT.md'})"
    )
    print("\n".join(release_lines(verdict, args.undecided)))
    return 1 if fails_the_run(verdict, args.undecided) else 0  # like the run: the verdict sets the exit code


if __name__ == "__main__":
    sys.exit(main())
