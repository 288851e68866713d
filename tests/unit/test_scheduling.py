"""The xdist schedule of a suite run: FP16 groups first and spread over the workers, then variants
whose references are ready. Checked on a simulated run (two workers, a 7B and a 0.5B model, the
measured shape of the seed matrix) against xdist's own loadgroup order."""

from __future__ import annotations

import heapq
from types import SimpleNamespace
from typing import Any

import pytest
from xdist.scheduler import LoadGroupScheduling

from quant_fixtures.plugin.scheduling import PairAwareScheduling, next_group, pair_of_group

MODELS, VARIANTS = ["qwen-0.5b", "mistral-7b"], ["fp16", "int8", "nf4"]
# seconds of each pair's evaluation (FP16 includes making the references); group sizes in tests
SECONDS = {
    ("mistral-7b", "fp16"): 30.0,
    ("mistral-7b", "int8"): 45.0,
    ("mistral-7b", "nf4"): 15.0,
    ("qwen-0.5b", "fp16"): 12.0,
    ("qwen-0.5b", "int8"): 20.0,
    ("qwen-0.5b", "nf4"): 6.0,
}
TESTS = {"fp16": 1, "int8": 4, "nf4": 4}
SIZE = {"mistral-7b": 14.5e9, "qwen-0.5b": 1.0e9}


def _pair(group: str) -> Any:
    return pair_of_group(group, MODELS, VARIANTS)


OURS: dict[str, Any] = dict(  # PairAwareScheduling's arguments
    pair=_pair, baseline="fp16", size=lambda g: SIZE[_pair(g)[0]] if _pair(g) else 0.0, models=frozenset(MODELS)
)


class FakeNode:
    def __init__(self, name: str) -> None:
        self.name, self.shutting_down = name, False
        self.queue: list[int] = []
        self.gateway = SimpleNamespace(id=name)

    def send_runtest_some(self, indices: list[int]) -> None:
        self.queue.extend(indices)

    def shutdown(self) -> None:
        self.shutting_down = True


def _collection() -> list[str]:
    """Each pair's tests, each model's whole-model test (its snapshot) and a test of no pair."""
    return (
        [
            f"tests/test_gates.py::test_gate[{m}-{v}-{i}]@{m}-{v}"
            for m in MODELS
            for v in VARIANTS
            for i in range(TESTS[v])
        ]
        + [f"tests/test_snapshots.py::test_snapshot[{m}]@{m}" for m in MODELS]
        + ["tests/test_unit.py::test_x"]
    )


def simulate(scheduler_class: type, workers: int = 2, **kwargs: Any) -> tuple[float, dict[str, list[str]], float]:
    """(wall time, groups per worker in order, seconds pair groups spent waiting on another worker).
    A variant whose FP16 pass has not started runs it first itself (the suite's lock does that)."""
    config = SimpleNamespace(
        getvalue=lambda name: {"tx": [f"{workers}*popen"], "dist": "loadgroup"}.get(name),
        option=SimpleNamespace(loadscopereorder=True),
    )
    sched = scheduler_class(config, None, **kwargs)
    sched.numnodes = workers
    nodes = [FakeNode(f"gw{i}") for i in range(workers)]
    collection = _collection()
    for node in nodes:
        sched.add_node(node)
        sched.add_node_collection(node, collection)
    sched.schedule()
    done_at: dict[tuple[str, str], float] = {}  # pair -> when its document (and references) exist
    order: dict[str, list[str]] = {n.name: [] for n in nodes}
    clock, waited = {n.name: 0.0 for n in nodes}, 0.0
    events: list[tuple[float, str, int]] = []  # (when a test ends, worker, test index), a heap
    busy: set[str] = set()

    def evaluate(model: str, variant: str, t: float, count_wait: bool = True) -> float:
        """When this worker has the pair's document, starting at ``t``: wait for another worker
        that is making it (the suite's locks), or make it here (FP16 first if nobody has)."""
        nonlocal waited
        if (model, variant) in done_at:
            waited += max(0.0, done_at[model, variant] - t) if count_wait else 0.0
            return max(t, done_at[model, variant])
        if variant != "fp16":
            t = evaluate(model, "fp16", t)
        done_at[model, variant] = t + SECONDS[model, variant]
        return done_at[model, variant]

    def start_next(node: FakeNode) -> None:
        if not node.queue:
            return
        index = node.queue.pop(0)
        group = collection[index].split("@")[-1] if "@" in collection[index] else collection[index]
        t = clock[node.name]
        if not order[node.name] or order[node.name][-1] != group:
            order[node.name].append(group)
            if group in MODELS:  # a whole-model test needs every pair of the model
                for variant in VARIANTS:  # waiting here is what is left at the end: not counted
                    t = evaluate(group, variant, t, count_wait=False)
            elif _pair(group):
                model, variant = _pair(group)
                t = evaluate(model, variant, t)
        heapq.heappush(events, (t, node.name, index))
        busy.add(node.name)

    for node in nodes:
        start_next(node)
    end, by_name = 0.0, {n.name: n for n in nodes}
    while events:
        t, name, index = heapq.heappop(events)
        end = max(end, t)
        busy.discard(name)
        sched.mark_test_complete(by_name[name], index)
        for node in nodes:  # idle workers start what they were given
            if node.name not in busy and node.queue:
                clock[node.name] = max(clock[node.name], t)
                start_next(node)
    assert sched.tests_finished
    return end, order, waited


def test_fp16_groups_start_first_one_per_worker_largest_model_first() -> None:
    _, order, _ = simulate(PairAwareScheduling, **OURS)
    assert order["gw0"][0] == "mistral-7b-fp16" and order["gw1"][0] == "qwen-0.5b-fp16"


def test_no_worker_waits_and_the_matrix_finishes_sooner_than_with_xdists_order() -> None:
    ours, order, waited = simulate(PairAwareScheduling, **OURS)
    theirs, _, _ = simulate(LoadGroupScheduling)
    serial = sum(SECONDS.values())
    assert waited == 0.0, order
    assert ours < theirs
    assert ours <= 0.6 * serial, (ours, serial, order)
    chain = SECONDS["mistral-7b", "fp16"] + SECONDS["mistral-7b", "int8"]  # no schedule beats this
    assert ours == chain
    for worker in order.values():  # whole-model tests come after every pair
        first = next((i for i, g in enumerate(worker) if g in MODELS), len(worker))
        assert all(_pair(g) is None for g in worker[first:])


def test_a_variant_waits_only_when_nothing_else_is_ready() -> None:
    waiting = ["mistral-7b-int8", "qwen-0.5b-nf4"]
    # Mistral's FP16 runs on another worker, Qwen's is finished: take Qwen's variant
    assert (
        next_group(
            waiting,
            {"qwen-0.5b-fp16"},
            set(),
            {"mistral-7b-fp16", "qwen-0.5b-fp16"},
            _pair,
            "fp16",
            lambda g: SIZE[_pair(g)[0]],
        )
        == "qwen-0.5b-nf4"
    )
    # FP16 queued earlier on this same worker counts as ready; the larger model goes first
    assert (
        next_group(
            waiting,
            {"qwen-0.5b-fp16"},
            {"mistral-7b-fp16"},
            {"mistral-7b-fp16", "qwen-0.5b-fp16"},
            _pair,
            "fp16",
            lambda g: SIZE[_pair(g)[0]],
        )
        == "mistral-7b-int8"
    )
    # an FP16 group of any model comes before every variant
    assert (
        next_group(["qwen-0.5b-int8", "qwen-0.5b-fp16"], set(), set(), set(), _pair, "fp16", lambda g: 0.0)
        == "qwen-0.5b-fp16"
    )
    # a variant that would wait comes before tests of no pair, and those before whole-model tests
    assert (
        next_group(
            ["mistral-7b", "tests/x.py::t", "mistral-7b-int8"],
            set(),
            set(),
            {"mistral-7b-fp16"},
            _pair,
            "fp16",
            lambda g: 0.0,
            frozenset(MODELS),
        )
        == "mistral-7b-int8"
    )
    assert (
        next_group(
            ["mistral-7b", "tests/x.py::t"], set(), set(), set(), _pair, "fp16", lambda g: 0.0, frozenset(MODELS)
        )
        == "tests/x.py::t"
    )


@pytest.mark.parametrize(
    "group,expected",
    [
        ("mistral-7b-int8", ("mistral-7b", "int8")),
        ("qwen-0.5b-fp16", ("qwen-0.5b", "fp16")),
        ("mistral-7b-int4", None),
        ("other-int8", None),
    ],
)
def test_group_names_map_back_to_pairs(group: str, expected: tuple[str, str] | None) -> None:
    assert pair_of_group(group, MODELS, VARIANTS) == expected
