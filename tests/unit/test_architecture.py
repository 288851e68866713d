"""The package's shape, checked: layers import only downwards, no import cycles, small modules,
and only the plugin layer touches pytest and syrupy. Imports are read from the source (ast), so
lazy imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "quant_fixtures"
# Bottom to top; a module may import modules of its own layer or below, never above.
LAYERS = [
    ("cpu_kernels", "attention_kernels", "json_types", "environment", "metrics", "names"),
    ("settings", "variants", "own_variants", "config_checks", "config", "model_ids", "inputs"),
    ("store",),
    ("models",),
    ("compute",),
    ("report",),
    ("session",),
    ("plugin", "attribute"),  # the pytest plugin and the attribution command: entry points
]
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__")
        found[name or "__init__"] = path
    return found


def imports_of(source: str, where: str = "<source>") -> set[str]:
    """quant_fixtures modules imported anywhere in the source (top level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("quant_fixtures."):
                base = node.module.removeprefix("quant_fixtures.")
                names.add(base)
                names.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{where}: relative import; the layers are read from absolute imports")
        elif isinstance(node, ast.Import):
            names.update(
                a.name.removeprefix("quant_fixtures.") for a in node.names if a.name.startswith("quant_fixtures.")
            )
    return names


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for index, group in enumerate(LAYERS):
        if top in group:
            return index
    raise AssertionError(f"module {module} is in no layer: add its folder to LAYERS")


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """{module: the modules of ``sources`` it imports}."""
    return {name: {m for m in imports_of(source, name) if m in sources} for name, source in sources.items()}


def upward_imports(graph: dict[str, set[str]], module: str) -> list[str]:
    """The modules ``module`` imports from a higher layer."""
    return sorted(m for m in graph[module] if _layer(m) > _layer(module))


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module, [module])
            if found:
                return found
    return None


def too_long(source: str) -> int | None:
    """The number of lines when over MAX_LINES, else None."""
    lines = len(source.splitlines())
    return lines if lines > MAX_LINES else None


def framework_imports(name: str, source: str) -> list[str]:
    """pytest / syrupy imports of a module outside the plugin layer."""
    if name.startswith("plugin"):
        return []
    found = []
    for node in ast.walk(ast.parse(source)):
        imported = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
        found += [f"{name}: {m}" for m in imported if m.split(".")[0] in ("pytest", "_pytest", "syrupy")]
    return found


MODULES = _modules()
SOURCES = {name: path.read_text(encoding="utf-8") for name, path in MODULES.items()}
GRAPH = import_graph(SOURCES)


@pytest.mark.parametrize("module", [m for m in MODULES if m != "__init__"])
def test_imports_go_down_the_layers(module: str) -> None:
    upward = upward_imports(GRAPH, module)
    assert not upward, f"{module} (layer {LAYERS[_layer(module)]}) imports from higher layers: {upward}"


def test_no_import_cycles() -> None:
    cycle = import_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("module", list(MODULES))
def test_modules_stay_small(module: str) -> None:
    lines = too_long(SOURCES[module])
    assert lines is None, f"{module}: {lines} lines (at most {MAX_LINES})"


def test_only_the_plugin_layer_imports_pytest_or_syrupy() -> None:
    offenders = [line for name, source in SOURCES.items() for line in framework_imports(name, source)]
    assert not offenders


def test_the_checks_see_a_violation() -> None:
    """Each check above, fed a synthetic package that breaks its rule, reports it (and stays quiet
    on the same package without the violation)."""
    sources = {
        "metrics.stats": "import math\n",
        "report.build": (
            "from quant_fixtures.metrics import stats\n"
            "def build():\n"
            "    from quant_fixtures.session.orchestrator import EvaluationSession  # lazy: still counts\n"
        ),
        "session.orchestrator": "import quant_fixtures.report.build\nimport pytest\n",
        "plugin.hooks": "import pytest\nfrom syrupy.assertion import SnapshotAssertion\n",
    }
    graph = import_graph(sources)
    assert graph["report.build"] == {"metrics.stats", "session.orchestrator"}
    # A report module importing the session is an upward import; the session importing a report is not.
    assert upward_imports(graph, "report.build") == ["session.orchestrator"]
    assert upward_imports(graph, "session.orchestrator") == []
    assert upward_imports(graph, "metrics.stats") == []
    # The same two modules form a cycle; without the lazy import there is none.
    assert import_cycle(graph) == ["report.build", "session.orchestrator", "report.build"]
    sources["report.build"] = "from quant_fixtures.metrics import stats\n"
    assert import_cycle(import_graph(sources)) is None
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    # pytest outside the plugin layer is caught, inside it is allowed.
    assert framework_imports("session.orchestrator", sources["session.orchestrator"]) == [
        "session.orchestrator: pytest"
    ]
    assert framework_imports("report.x", "from _pytest.fixtures import FixtureRequest\n") == [
        "report.x: _pytest.fixtures"
    ]
    assert framework_imports("plugin.hooks", sources["plugin.hooks"]) == []
    # A long module, a relative import, a module outside every layer.
    assert too_long("x = 1\n" * (MAX_LINES + 1)) == MAX_LINES + 1
    assert too_long("x = 1\n" * MAX_LINES) is None
    with pytest.raises(AssertionError, match="relative import"):
        imports_of("from . import stats\n")
    with pytest.raises(AssertionError, match="in no layer"):
        upward_imports({"tools.x": {"metrics.stats"}, "metrics.stats": set()}, "tools.x")


def test_the_int8_loader_replacement_is_scoped_to_cuda_loads() -> None:
    """On the CPU nothing is replaced; on CUDA transformers' converter is restored afterwards."""
    from quant_fixtures.models import int8_on_device

    converter = int8_on_device._round_trip_converter()
    original = converter.convert if converter is not None else None
    with int8_on_device.int8_quantized_on_device("cpu") as replaced:
        assert not replaced
        assert converter is None or converter.convert is original
    with int8_on_device.int8_quantized_on_device("cuda:0") as replaced:
        assert replaced == (converter is not None)
        if converter is not None:
            assert converter.convert is int8_on_device._convert_in_place
    assert converter is None or converter.convert is original


# -- every forward pass runs inside the memory executor (compute/memory.run_batches) -------------
# A forward is a call of ``<x>.base_model(...)``, ``<x>.generate(...)`` or ``model(...)``. It may
# stand only in a function named ``run`` (the callback handed to run_sized / run_batches) or in the
# static decoder's batch object, whose methods only such a callback calls; the tests run the suite
# with QUANT_FIXTURES_STRICT_EXECUTOR=1, which checks the same at run time.
FORWARD_HOMES = {"run"}
FORWARD_CLASSES = {"StaticGreedyBatch"}
# Not a stage of an evaluation: the Hugging Face guide's one-window loop the benchmarks compare with.
NOT_A_STAGE = {"compute.benchmarking"}


def _is_forward(call: ast.Call) -> bool:
    func = call.func
    return (isinstance(func, ast.Attribute) and func.attr in ("base_model", "generate", "model")) or (
        isinstance(func, ast.Name) and func.id == "model"
    )


def forwards_outside_the_executor(source: str) -> list[int]:
    """Line numbers of forward calls that are not inside a ``run`` callback or the decoder class."""
    outside: list[int] = []

    def visit(node: ast.AST, homed: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in FORWARD_HOMES:
            homed = True
        if isinstance(node, ast.ClassDef) and node.name in FORWARD_CLASSES:
            homed = True
        if isinstance(node, ast.Call) and _is_forward(node) and not homed:
            outside.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, homed)

    visit(ast.parse(source), False)
    return outside


@pytest.mark.parametrize("module", [m for m in MODULES if m != "__init__" and m not in NOT_A_STAGE])
def test_forward_passes_run_inside_the_memory_executor(module: str) -> None:
    lines = forwards_outside_the_executor(MODULES[module].read_text(encoding="utf-8"))
    assert not lines, f"{module}: forward pass outside compute/memory.run_batches at lines {lines}"


def test_the_executor_check_sees_a_violation() -> None:
    bad = "def score(model, ids):\n    return model.base_model(input_ids=ids)\n"
    good = (
        "def score(model, ids, budget):\n    def run(batch):\n        model(input_ids=ids)\n"
        "    run_batches([[0]], run)\n"
    )
    assert forwards_outside_the_executor(bad) == [2]
    assert forwards_outside_the_executor(good) == []


def test_strict_mode_refuses_a_forward_outside_the_executor() -> None:
    import torch

    from quant_fixtures.compute.memory import BatchLog, MemoryBudget, require_executor, run_batches

    layer = torch.nn.Linear(2, 2)
    layer.register_forward_pre_hook(require_executor)
    with pytest.raises(RuntimeError, match="outside the memory executor"):
        layer(torch.zeros(1, 2))
    ran = []
    run_batches([[0]], lambda batch: ran.append(layer(torch.zeros(1, 2))), MemoryBudget("cpu"), BatchLog(), "s", "x")
    assert len(ran) == 1


def test_test_modules_have_unique_basenames() -> None:
    """Test folders are not packages, so pytest imports each test file by its basename: two files of
    one name in different folders stop the whole collection ("import file mismatch")."""
    root = PACKAGE.parent
    names: dict[str, list[str]] = {}
    for path in [*root.joinpath("tests").rglob("test_*.py"), *root.joinpath("benchmarks").rglob("test_*.py")]:
        if "__snapshots__" not in path.parts:
            names.setdefault(path.name, []).append(str(path.relative_to(root)))
    assert not {name: paths for name, paths in names.items() if len(paths) > 1}


MAX_ANY = 3  # issue 20: Any only where a third-party API forces it (1 today: from_pretrained's **kwargs)


def _any_uses(source: str) -> int:
    """Annotations and expressions naming typing.Any (the import line itself is not a use)."""
    tree = ast.parse(source)
    return sum(
        1
        for node in ast.walk(tree)
        if (isinstance(node, ast.Name) and node.id == "Any")
        or (isinstance(node, ast.Attribute) and node.attr == "Any")
        or (isinstance(node, ast.Constant) and isinstance(node.value, str) and _names_any(node.value))
    )


def _names_any(text: str) -> bool:
    """A string annotation (``"dict[str, Any]"``) counts as well."""
    try:
        parsed = ast.parse(text, mode="eval")
    except SyntaxError:
        return False
    return any(isinstance(n, ast.Name) and n.id == "Any" for n in ast.walk(parsed))


def test_any_stays_rare() -> None:
    counts = {name: _any_uses(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}
    total = sum(counts.values())
    worst = sorted(((n, m) for m, n in counts.items() if n), reverse=True)[:8]
    assert total <= MAX_ANY, f"{total} uses of Any (at most {MAX_ANY}); most in: {worst}"


def test_the_any_count_sees_every_form() -> None:
    source = 'from typing import Any\nimport typing\nx: Any\ny: "dict[str, Any]"\nz: typing.Any\nw: "Anything"\n'
    assert _any_uses(source) == 3
