"""Every test can fail: each test function in tests/ and benchmarks/ checks something (an ``assert``,
``pytest.raises`` / ``warns`` / ``fail``, an ``assert_*`` helper such as ``torch.testing.assert_close``
or pytester's ``fnmatch_lines`` / ``assert_outcomes``, or a helper of the test files that does one of
these), its checks are not all of the kind that always holds (``isinstance``, ``is not None``, a
constant), and no ``try`` around them swallows the failure (``except Exception: pass``).

Read from the source (ast), as tests/unit/test_architecture.py reads the package."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Calls that fail the test when their condition does not hold.
CHECK_CALLS = {"raises", "warns", "deprecated_call", "fail", "fnmatch_lines", "re_match_lines", "no_fnmatch_line"}
CHECK_PREFIXES = ("assert",)  # assert_close, assert_array_equal, assert_outcomes, assert_gate, ...
SWALLOWED = {"Exception", "BaseException", "AssertionError"}


def _call_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _checks_directly(function: ast.AST) -> bool:
    for node in ast.walk(function):
        if isinstance(node, (ast.Assert, ast.Raise)):
            return True
        if isinstance(node, ast.Call):
            name = _call_name(node)
            if name in CHECK_CALLS or name.startswith(CHECK_PREFIXES):
                return True
    return False


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _called_functions(node: ast.AST) -> set[str]:
    """Plain function calls (``helper(...)``, not ``obj.method(...)``)."""
    return {n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}


def checking_helpers(trees: list[ast.AST]) -> set[str]:
    """Names of the functions defined in these files that check (directly or through another)."""
    defined: dict[str, list[ast.AST]] = {}
    for tree in trees:
        for function in _functions(tree):
            defined.setdefault(function.name, []).append(function)
    checking = {name for name, bodies in defined.items() if any(_checks_directly(b) for b in bodies)}
    grown = True
    while grown:
        grown = False
        for name, bodies in defined.items():
            if name not in checking and any(_called_functions(b) & checking for b in bodies):
                checking.add(name)
                grown = True
    return checking


def _own_names(tree: ast.AST) -> set[str]:
    """Functions a module defines or imports by name: the helpers its tests can call."""
    names = {f.name for f in _functions(tree)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
    return names


def _always_holds(test: ast.expr) -> bool:
    """An assertion that holds for any value of the kind the code returns."""
    if isinstance(test, ast.Constant):
        return True
    if isinstance(test, ast.Call) and _call_name(test) in ("isinstance", "hasattr", "callable"):
        return True
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.IsNot):
        right = test.comparators[0]
        return isinstance(right, ast.Constant) and right.value is None
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return all(_always_holds(v) for v in test.values)
    return False


def _swallows(handler: ast.ExceptHandler) -> bool:
    caught = handler.type
    names = (
        {None}
        if caught is None
        else {e.id for e in caught.elts if isinstance(e, ast.Name)}
        if isinstance(caught, ast.Tuple)
        else {caught.id}
        if isinstance(caught, ast.Name)
        else set()
    )
    silent = all(isinstance(s, (ast.Pass, ast.Continue)) or isinstance(s, ast.Expr) for s in handler.body)
    return silent and bool(names & (SWALLOWED | {None}))


def problems_of(source: str, helpers: set[str]) -> list[str]:
    """'name: why' for each test function of ``source`` that cannot fail; ``helpers``: the checking
    functions of the test files (those this module defines or imports count)."""
    problems = []
    tree = ast.parse(source)
    helpers = helpers & _own_names(tree)
    tests = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    tests += [m for c in tree.body if isinstance(c, ast.ClassDef) for m in c.body if isinstance(m, ast.FunctionDef)]
    for test in (t for t in tests if t.name.startswith("test")):
        calls = {_call_name(n) for n in ast.walk(test) if isinstance(n, ast.Call)}
        helped = bool(_called_functions(test) & helpers)
        asserts = [n for n in ast.walk(test) if isinstance(n, ast.Assert)]
        if not _checks_directly(test) and not helped:
            problems.append(f"{test.name}: checks nothing")
        elif asserts and all(_always_holds(a.test) for a in asserts) and not (_checks_calls(calls) or helped):
            problems.append(f"{test.name}: asserts only what always holds (a type, `is not None`, a constant)")
        for node in ast.walk(test):
            if isinstance(node, ast.Try) and any(_swallows(h) for h in node.handlers):
                problems.append(f"{test.name}: line {node.lineno} swallows failures (except ...: pass)")
    return problems


def _checks_calls(calls: set[str]) -> bool:
    return any(c in CHECK_CALLS or c.startswith(CHECK_PREFIXES) for c in calls)


def _test_sources() -> dict[str, str]:
    paths = [*ROOT.joinpath("tests").rglob("*.py"), *ROOT.joinpath("benchmarks").rglob("*.py")]
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in sorted(paths)}


SOURCES = _test_sources()
HELPERS = checking_helpers([ast.parse(s) for s in SOURCES.values()])


@pytest.mark.parametrize("path", [p for p in SOURCES if Path(p).name.startswith("test_")])
def test_every_test_can_fail(path: str) -> None:
    problems = problems_of(SOURCES[path], HELPERS)
    assert not problems, f"{path}: tests that cannot fail: {problems}"


def test_the_check_sees_tests_that_cannot_fail() -> None:
    source = """
import pytest

def _expect_refused(value):
    with pytest.raises(ValueError):
        parse(value)

def _log(value):
    print(value)

def test_nothing():
    parse("1")

def test_only_logs():
    _log(parse("1"))

def test_a_type():
    assert isinstance(parse("1"), int)

def test_not_none():
    value = parse("1")
    assert value is not None and isinstance(value, int)

def test_assert_true():
    assert True

def test_swallowed():
    try:
        assert parse("1") == 2
    except AssertionError:
        pass

class TestGrouped:
    def test_method_without_check(self):
        parse("1")

def test_value():
    assert parse("1") == 1

def test_refused():
    _expect_refused("x")

def test_close():
    torch.testing.assert_close(parse("1"), 1)

def test_output(pytester):
    pytester.runpytest().stdout.fnmatch_lines(["*1 passed*"])

def test_reraised():
    try:
        parse("1")
    except ValueError:
        raise AssertionError("refused") from None
"""
    problems = problems_of(source, checking_helpers([ast.parse(source)]))
    assert [p.split(":")[0] for p in problems] == [
        "test_nothing",
        "test_only_logs",
        "test_a_type",
        "test_not_none",
        "test_assert_true",
        "test_swallowed",
        "test_method_without_check",
    ]
    assert "swallows" in problems[5] and "always holds" in problems[2]
