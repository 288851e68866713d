"""REPORT.md's plots, read back from the figures: one colour per variant in every plot, the
footprint plot's point names clear of each other and its axis label inside the figure."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from itertools import combinations
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest
from documents_for_tests import typed
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.collections import Collection
from matplotlib.colors import to_rgba
from matplotlib.container import BarContainer, Container, ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Annotation
from matplotlib.typing import ColorType

from quant_fixtures.report.plots import (
    footprint_figure,
    harm_by_position_figure,
    kl_by_category_figure,
    kl_distribution_figure,
    variant_colours,
)
from quant_fixtures.report.schema import EvaluationDocument, LongContext

BASE = typed({})
FigureMaker = Callable[[str, dict[str, EvaluationDocument]], Figure | None]
Draw = Callable[[FigureMaker], Figure]  # the drawn fixture


def _doc(delta_ppl: float, footprint: float, kl: float) -> EvaluationDocument:
    """A document with these numbers, in every section a plot reads."""
    assert BASE.kl_divergence is not None
    prompt, category = BASE.kl_divergence.per_prompt[0], BASE.kl_divergence.per_category["math"]
    buckets = [
        {"ppl": 10.0, "kl_mean": kl * (1 + i), "kl_mean_ci95": [kl * 0.5, kl * (2 + i)], "mean_context": 64 << i}
        for i in range(3)
    ]
    return replace(
        BASE,
        perplexity=replace(
            BASE.perplexity, delta_ppl_pct=delta_ppl, delta_ppl_pct_ci95=[delta_ppl - 0.3, delta_ppl + 0.3]
        ),
        memory=replace(BASE.memory, footprint_gb=footprint),
        kl_divergence=replace(
            BASE.kl_divergence,
            per_prompt=[{**prompt, "id": f"p{i}", "kl_mean": kl * (1 + i)} for i in range(3)],
            per_category={"math": {**category, "kl_mean": kl}},
        ),
        # harm_by_position reads only the buckets of a comparison (it has a growth)
        long_context=cast(LongContext, SimpleNamespace(buckets={"growth": {}, "buckets": buckets})),
    )


# SmolLM2-135M's variants as make eval measures them: int8 and gguf_q8_0 nearly the same size and cost.
DOCS = {
    "fp16": _doc(0.0, 0.270, 0.0),
    "int8": _doc(0.55, 0.1620, 0.02),
    "nf4": _doc(10.0, 0.110, 0.15),
    "gguf_q8_0": _doc(0.60, 0.1625, 0.015),
    "gguf_q4_0": _doc(20.0, 0.090, 0.25),
}
FIGURES = [kl_distribution_figure, kl_by_category_figure, footprint_figure, harm_by_position_figure]


@pytest.fixture
def drawn() -> Iterator[Draw]:
    """Draws figures, and closes them after the test."""
    made: list[Figure] = []

    def draw(make: FigureMaker) -> Figure:
        fig = make("m", DOCS)
        assert fig is not None, make.__name__
        made.append(fig)
        fig.canvas.draw()
        return fig

    yield draw
    import matplotlib.pyplot as plt  # after the plots chose their backend

    for fig in made:
        plt.close(fig)


def _label(drawn: Artist | Container) -> str:
    label = drawn.get_label()
    assert isinstance(label, str), drawn
    return label


def _first_face_colour(collection: Collection) -> ColorType:
    colours = collection.get_facecolor()
    assert isinstance(colours, np.ndarray)  # a collection holds its face colours as RGBA rows
    return tuple(colours[0])


def _renderer(fig: Figure) -> RendererAgg:
    canvas = fig.canvas
    assert isinstance(canvas, FigureCanvasAgg)  # the plots draw with the Agg backend
    renderer: RendererAgg = canvas.get_renderer()  # matplotlib leaves this method untyped
    return renderer


def _annotation(text: object) -> Annotation:
    assert isinstance(text, Annotation), text
    return text


def colours_by_variant(fig: Figure) -> dict[str, tuple[float, float, float]]:
    """The colour each labelled variant is drawn in (its points, bars or line), without alpha."""
    ax = fig.axes[0]
    found: dict[str, ColorType] = {}
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            found[_label(container)] = container.lines[0].get_color()
        elif isinstance(container, BarContainer):
            found[_label(container)] = container.patches[0].get_facecolor()
    artists: list[Collection | Line2D] = [*ax.collections, *ax.lines]
    for artist in artists:
        label = _label(artist)
        if not label.startswith("_") and label not in found:
            found[label] = _first_face_colour(artist) if isinstance(artist, Collection) else artist.get_color()
    return {label: to_rgba(colour)[:3] for label, colour in found.items()}


def test_a_variant_has_one_colour_in_every_plot(drawn: Draw) -> None:
    expected = {key: colour[:3] for key, colour in variant_colours(DOCS).items()}
    assert len(set(expected.values())) == len(DOCS)  # and every variant its own
    for make in FIGURES:
        shown = colours_by_variant(drawn(make))
        quantized = set(DOCS) - {"fp16"}
        assert quantized <= set(shown), (make.__name__, sorted(shown))
        assert shown == {key: expected[key] for key in shown}, make.__name__


def test_footprint_names_do_not_overlap(drawn: Draw) -> None:
    fig = drawn(footprint_figure)
    renderer = _renderer(fig)
    names = {text.get_text(): text.get_window_extent(renderer) for text in fig.axes[0].texts}
    assert set(names) == set(DOCS)
    for (a, box_a), (b, box_b) in combinations(names.items(), 2):
        assert not box_a.overlaps(box_b), f"{a} and {b} overlap"


def test_footprint_names_are_placed_the_same_way_every_time(drawn: Draw) -> None:
    def positions() -> list[tuple[float, float]]:
        return [_annotation(text).xyann for text in drawn(footprint_figure).axes[0].texts]

    assert positions() == positions()


@pytest.mark.parametrize("make", FIGURES, ids=lambda f: f.__name__)
def test_axis_labels_and_title_are_inside_the_figure(drawn: Draw, make: FigureMaker) -> None:
    fig = drawn(make)
    renderer, ax = _renderer(fig), fig.axes[0]
    for text in (ax.xaxis.label, ax.yaxis.label, ax.title):
        box = text.get_window_extent(renderer)
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1, f"{text.get_text()!r} is cut off"
        assert fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1, f"{text.get_text()!r} is cut off"
