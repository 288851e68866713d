"""The llama.cpp and lm-eval window plans against plain transcriptions of their definitions
(llama.cpp tools/perplexity/perplexity.cpp perplexity(); lm-eval utils.get_rolling_token_windows
with context_len=1 followed by make_disjoint_window), and the document-level split."""

from collections.abc import Sequence

import pytest

from quant_fixtures.inputs.corpus_protocols import documents_plan, lm_eval_word_count, scored_text_units
from quant_fixtures.inputs.wikitext_documents import detokenize, raw_lines, wikitext_pages
from quant_fixtures.metrics.perplexity import Window, llama_cpp_windows, rolling_windows

ReadsAndScores = tuple[list[int], list[int]]  # (token ids the model reads, target ids scored)


def reads_and_scores(seq: Sequence[int], w: Window) -> ReadsAndScores:
    """(token ids the model reads, target ids scored) of one window of the suite."""
    reads = list(seq[w.begin : w.end - 1])
    if w.first_input is not None:
        reads[0] = w.first_input
    return reads, list(seq[w.first_target : w.end])


def plain_llama_cpp(tokens: list[int], n_ctx: int, bos: int | None) -> list[ReadsAndScores]:
    out: list[ReadsAndScores] = []
    for i in range(len(tokens) // n_ctx):
        chunk = list(tokens[i * n_ctx : (i + 1) * n_ctx])
        if bos is not None:
            chunk[0] = bos
        first = n_ctx // 2
        # logits at positions first .. n_ctx-2 predict chunk tokens first+1 .. n_ctx-1 (the originals)
        out.append((chunk[: n_ctx - 1], list(tokens[i * n_ctx + first + 1 : (i + 1) * n_ctx])))
    return out


def plain_rolling(tokens: list[int], prefix: int, max_len: int) -> list[ReadsAndScores]:
    pairs: list[tuple[list[int], list[int]]] = []
    first = min(max_len, len(tokens))
    pairs.append(([prefix] + tokens[: first - 1], tokens[:first]))
    done = first
    while done < len(tokens):
        size = min(len(tokens) - done, max_len)
        end = done + size
        pairs.append((tokens[end - max_len - 1 : end - 1], tokens[end - size : end]))
        done = end
    out: list[ReadsAndScores] = []
    for context, continuation in pairs:  # make_disjoint_window, then the model reads (context + cont)[:-1]
        context = context[: len(context) - (len(continuation) - 1)]
        out.append(((context + continuation)[:-1], continuation))
    return out


@pytest.mark.parametrize("n_tokens,n_ctx,bos", [(2048, 512, 1), (1500, 512, None), (100, 8, 0), (37, 6, 5)])
def test_llama_cpp_windows_read_and_score_what_llama_perplexity_does(
    n_tokens: int, n_ctx: int, bos: int | None
) -> None:
    tokens = list(range(100, 100 + n_tokens))
    windows = llama_cpp_windows(n_tokens, n_ctx, bos)
    assert [reads_and_scores(tokens, w) for w in windows] == plain_llama_cpp(tokens, n_ctx, bos)
    assert all(w.scored == n_ctx - 1 - n_ctx // 2 for w in windows)  # 255 for 512


def test_llama_cpp_windows_respect_the_budget_and_refuse_too_little() -> None:
    assert len(llama_cpp_windows(5000, 512, 1, max_tokens=1100)) == 2
    with pytest.raises(ValueError, match="no complete chunk"):
        llama_cpp_windows(500, 512, 1)


@pytest.mark.parametrize("n_doc,max_len", [(1, 4), (4, 4), (5, 4), (9, 4), (13, 4), (30, 7), (3, 10), (64, 16)])
def test_rolling_windows_read_and_score_what_lm_eval_does(n_doc: int, max_len: int) -> None:
    doc = list(range(1000, 1000 + n_doc))
    seq = [7, 7, 7] + [99] + doc + [8]  # other tokens around; the prefix (99) at position 3
    windows = rolling_windows(3, n_doc, max_len)
    assert [reads_and_scores(seq, w) for w in windows] == plain_rolling(doc, 99, max_len)
    assert sum(w.scored for w in windows) == n_doc  # every token once
    assert all(w.length - 1 <= max_len for w in windows)  # never reads more than max_len tokens


def test_documents_plan_places_each_document_after_its_prefix() -> None:
    docs, pages = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]], ["a b\n", " c ", "d é"]
    plan = documents_plan(docs, pages, prefix=0, max_len=2, max_tokens=None)
    assert plan.ids.tolist() == [0, 1, 2, 3, 0, 4, 5, 0, 6, 7, 8, 9, 10]
    assert plan.documents == 3 and sum(w.scored for w in plan.windows) == 10
    # lm-eval's counts: re.split(r"\s+") pieces (leading/trailing whitespace adds empty ones), UTF-8 bytes
    assert plan.scored_words == 3 + 3 + 2 and plan.scored_bytes == 4 + 3 + 4
    budget = documents_plan(docs, pages, prefix=0, max_len=2, max_tokens=5)
    assert budget.documents == 2 and budget.ids.tolist() == [0, 1, 2, 3, 0, 4, 5]
    with pytest.raises(ValueError, match="no whole WikiText-2 document fits"):
        documents_plan(docs, pages, prefix=0, max_len=2, max_tokens=2)


def test_word_count_is_lm_evals() -> None:
    # re.split on whitespace runs: leading and trailing whitespace each add an empty piece
    assert lm_eval_word_count(" = A = \n b c\n") == 7
    assert lm_eval_word_count("a b") == 2


def test_pages_of_a_small_split() -> None:
    rows = [
        "",
        " = First = \n",
        "",
        " Text one .\n",
        "",
        " = = Section = = \n",
        "",
        " More @-@ text .\n",
        "",
        " = Second = \n",
        "",
        " Two , words\n",
        "",
    ]
    pages = wikitext_pages(rows)
    assert raw_lines(rows)[:2] == [" ", " = First = "]
    assert pages == [
        " = First = \n \n Text one .\n \n = = Section = = \n \n More @-@ text .\n ",
        " = Second = \n \n Two , words\n \n",
    ]  # the last page keeps the file's final newline
    # " . " needs a space after it: a line ending " .\n" keeps its space (real WikiText lines end " . ")
    assert detokenize(pages[0]) == " = First =\n\nText one .\n\n== Section ==\n\nMore-text .\n"


def test_detokenizer_rules() -> None:
    # " N " -> " 1 " (WikiText's number placeholder), then " 's" -> "'s"
    assert detokenize('a @,@ b @.@ c ( x ) [ y ] " q " 20 ° C N \'s') == 'a,b.c (x) [y] "q" 20°C 1\'s'
    assert detokenize("the dogs ' bone ; yes ! no ? ok : fine") == "the dogs' bone; yes! no? ok: fine"


def test_text_units_of_windows_that_score_everything_after_the_first_token() -> None:
    text = "héllo  wörld\nfoo"
    ends = [0, 5, 6, 12, 16]  # a BOS (no text), then tokens ending at these characters
    from quant_fixtures.metrics.perplexity import Window

    scored_bytes, scored_words = scored_text_units(text, ends, [Window(0, 3, 1), Window(2, 5, 3)])
    assert scored_bytes == len(text.encode("utf-8"))  # the BOS stands for nothing
    assert scored_words == 3
    assert scored_text_units(text, ends, [Window(2, 4, 3)]) == (len(" wörld".encode()), 1)  # text[6:12]
