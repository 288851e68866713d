"""Every relative link of README.md and docs/*.md leads to a file of the checkout and, with an
anchor, to one of its headings (GitHub's anchors: lower case, punctuation dropped, spaces as '-')."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(document: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", document.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def relative_links(document: Path) -> list[str]:
    found = LINK.findall(document.read_text(encoding="utf-8"))
    return [link for link in found if not re.match(r"[a-z]+:", link)]


@pytest.mark.parametrize("document", DOCUMENTS, ids=[d.name for d in DOCUMENTS])
def test_every_relative_link_leads_somewhere(document: Path) -> None:
    for link in relative_links(document):
        path, _, fragment = link.partition("#")
        target = (document.parent / path).resolve() if path else document
        assert target.exists(), f"{document.name}: {link} leads to no file"
        if fragment:
            assert fragment in anchors(target), f"{document.name}: {link} names no heading of {target.name}"


def test_the_readme_links_every_document_in_docs() -> None:
    linked = {Path(link.partition("#")[0]).name for link in relative_links(REPO / "README.md")}
    assert {d.name for d in DOCUMENTS[1:]} <= linked
