"""Where WikiText-2 comes from: the shipped copy unless the user asks for the Hub."""

import socket

import pytest

from quant_fixtures.inputs import wikitext
from quant_fixtures.inputs.wikitext import WIKITEXT_SHA256, DatasetError, load_wikitext2_test


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    """Any attempt to reach the network fails the test."""
    attempts: list[tuple[object, ...]] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(wikitext, "_rows_from_hub", lambda: refuse("the Hub"))
    return attempts


@pytest.mark.parametrize("source", ["vendored", "auto"])
def test_the_default_and_auto_read_the_shipped_copy_without_the_network(
    no_network: list[tuple[object, ...]], source: str
) -> None:
    text = load_wikitext2_test(source)
    assert (text.source, text.sha256) == ("vendored", WIKITEXT_SHA256)
    assert no_network == []


def test_the_default_source_is_the_shipped_copy(no_network: list[tuple[object, ...]]) -> None:
    assert load_wikitext2_test().source == "vendored"
    from quant_fixtures.settings import PerplexityProtocol

    assert PerplexityProtocol(ctx=None, max_tokens=None, stride=None, batch_size=1).dataset_source == "vendored"


def test_hub_is_asked_for_and_fails_loudly(no_network: list[tuple[object, ...]]) -> None:
    with pytest.raises(DatasetError, match="--dataset-source hub: WikiText-2 could not be loaded from the Hub"):
        load_wikitext2_test("hub")
    assert no_network  # it did try


def test_an_unknown_source_names_the_valid_ones() -> None:
    with pytest.raises(DatasetError, match="unknown dataset source 'web'; valid: vendored, hub, auto"):
        load_wikitext2_test("web")
