"""WikiText-2 test as documents, the way lm-evaluation-harness's ``wikitext`` task reads it.

lm-eval loads ``EleutherAI/wikitext_document_level`` (config ``wikitext-2-raw-v1``), whose pages are
the lines of ``wiki.test.raw`` cut before every top-level heading (`` = Title = ``; a second-level
`` = = Section = = `` does not start a page) and joined with newlines; blank pages are skipped.
The split we ship is the line-level one (one row per line; a blank line is served as ``""``, a
text line keeps its ``"\\n"``), so the raw lines are rebuilt first: ``""`` -> ``" "`` (blank lines of
wiki.test.raw hold one space: inferred from the tokenized release of the same split, which starts
``" \\n = Robert <unk> = \\n \\n"``; the raw zip was not reachable to check byte for byte) and the
trailing newline dropped. That gives the dataset's 62 test pages, 241,335 words and 1,290,527 bytes
by lm-eval's counts.

Each page is then detokenized as lm-eval's ``wikitext_detokenizer`` does before scoring (the
replacements below are its, in its order); words and bytes are still counted on the original page.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


def raw_lines(rows: Sequence[str]) -> list[str]:
    return [" " if row == "" else row[:-1] if row.endswith("\n") else row for row in rows]


def _is_page_title(line: str) -> bool:
    flat = line.replace("= = =", "===").replace("= =", "==").strip()
    return flat.startswith("= ") and flat.endswith(" =")


def wikitext_pages(rows: Sequence[str]) -> list[str]:
    """The document-level pages of the split's rows, in order."""
    pages: list[str] = []
    current: list[str] = []
    for line in raw_lines(rows) + [""]:  # "": after the file's final newline, as str.split("\n") gives
        if _is_page_title(line):
            page = "\n".join(current)
            if page.strip():
                pages.append(page)
            current = []
        current.append(line)
    pages.append("\n".join(current))  # the last page ends with that final newline
    return pages


# (pattern, replacement, is_regex), applied in this order.
_DETOKENIZE = (
    ("s '", "s'", False),
    (r"/' [0-9]/", r"/'[0-9]/", True),
    (" @-@ ", "-", False),
    (" @,@ ", ",", False),
    (" @.@ ", ".", False),
    (" : ", ": ", False),
    (" ; ", "; ", False),
    (" . ", ". ", False),
    (" ! ", "! ", False),
    (" ? ", "? ", False),
    (" , ", ", ", False),
    (r"\(\s*([^\)]*?)\s*\)", r"(\1)", True),
    (r"\[\s*([^\]]*?)\s*\]", r"[\1]", True),
    (r"{\s*([^}]*?)\s*}", r"{\1}", True),
    (r"\"\s*([^\"]*?)\s*\"", r'"\1"', True),
    (r"'\s*([^']*?)\s*'", r"'\1'", True),
    ("= = = =", "====", False),
    ("= = =", "===", False),
    ("= =", "==", False),
    (" \u00b0 ", "\u00b0", False),
    (" \n", "\n", False),
    ("\n ", "\n", False),
    (" N ", " 1 ", False),
    (" 's", "'s", False),
)


def detokenize(page: str) -> str:
    """lm-eval's wikitext detokenization of one page."""
    for pattern, replacement, is_regex in _DETOKENIZE:
        page = re.sub(pattern, replacement, page) if is_regex else page.replace(pattern, replacement)
    return page
