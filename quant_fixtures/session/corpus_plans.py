"""The corpus plan of each model: the WikiText-2 token ids as the perplexity protocol reads them
(tokenized in a background thread while the model loads, cached on disk per tokenizer) and the
windows the protocol scores over them (of the window length the model gets, ModelUnderTest.ctx)."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from quant_fixtures.inputs.corpus_protocols import (
    CorpusPlan,
    adds_bos,
    document_tokens,
    documents_plan,
    joined_plan,
    joined_tokens,
    prefix_token,
)
from quant_fixtures.inputs.wikitext import EvalText
from quant_fixtures.inputs.wikitext_documents import detokenize
from quant_fixtures.session.inputs import CorpusText
from quant_fixtures.session.model_facts import ModelUnderTest
from quant_fixtures.settings import PerplexityProtocol

if TYPE_CHECKING:
    import torch

Tensors = dict[str, "torch.Tensor"]


class CorpusPlans:
    def __init__(self, protocol: PerplexityProtocol, cache_dir: Path, corpus: CorpusText) -> None:
        self.protocol, self.cache_dir, self.corpus = protocol, cache_dir, corpus
        self._corpus_tokens: dict[str, Future[Tensors]] = {}  # model -> its corpus tokens
        self._tokens_by_tokenizer: dict[tuple[str, str], Tensors] = {}
        self._plans: dict[str, CorpusPlan] = {}
        self._pool: ThreadPoolExecutor | None = None

    def _by_document(self) -> bool:
        """lm-eval's protocol reads WikiText-2 as documents; the others read the joined text."""
        return self.protocol.protocol == "lm-eval"

    def prefetch(self, model: ModelUnderTest) -> None:
        """Start tokenizing the model's corpus in a background thread (while the model loads;
        tokenizers run in Rust without the GIL)."""
        if model.key not in self._corpus_tokens:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quant-tokenize")
            text = self.corpus.text()  # here: memoised once, not raced
            if self._by_document():
                self.corpus.pages()  # likewise
            self._corpus_tokens[model.key] = self._pool.submit(self._tokenized_corpus, model, text)

    def _tokenized_corpus(self, model: ModelUnderTest, text: EvalText, joined: bool = False) -> Tensors:
        """The tokens the protocol needs (``joined``: the joined text's, whatever the protocol), once
        per tokenizer, cached on disk."""
        import torch

        from quant_fixtures.store.corpus_tokens import corpus_tokens_path, load_corpus_tokens, save_corpus_tokens
        from quant_fixtures.store.stale import warn_recomputed

        by_document, digest = self._by_document() and not joined, model.tokenizer_sha256
        kind, names = ("documents-v2", ("ids", "lengths")) if by_document else ("joined-v2", ("ids", "ends"))
        if (digest, kind) not in self._tokens_by_tokenizer:
            tensors, reason = load_corpus_tokens(self.cache_dir, digest, text.sha256, kind, names)
            if tensors is None:
                warn_recomputed(corpus_tokens_path(self.cache_dir, digest, text.sha256, kind), reason)
                tokenizer = model.tokenizer
                if by_document:
                    docs = document_tokens(tokenizer, [detokenize(p) for p in self.corpus.pages()])
                    tensors = {
                        "ids": torch.tensor([t for d in docs for t in d], dtype=torch.long),
                        "lengths": torch.tensor([len(d) for d in docs], dtype=torch.long),
                    }
                else:
                    ids, ends = joined_tokens(tokenizer, text.text)
                    tensors = {"ids": ids, "ends": ends}
                save_corpus_tokens(self.cache_dir, digest, text.sha256, kind, tensors)
            self._tokens_by_tokenizer[(digest, kind)] = tensors
        return self._tokens_by_tokenizer[(digest, kind)]

    def plan(self, model: ModelUnderTest) -> CorpusPlan:
        """The token sequence and windows the protocol scores, with the bytes and words they stand for."""
        if model.key not in self._plans:
            self.prefetch(model)
            tensors, p, ctx = self._corpus_tokens[model.key].result(), self.protocol, model.ctx
            tokenizer, text = model.tokenizer, self.corpus.text()
            if self._by_document():
                docs = list(tensors["ids"].split(tensors["lengths"].tolist()))
                self._plans[model.key] = documents_plan(
                    [d.tolist() for d in docs], self.corpus.pages(), prefix_token(tokenizer), ctx, p.max_tokens
                )
            else:
                self._plans[model.key] = joined_plan(
                    p.protocol,
                    tensors["ids"],
                    tensors["ends"],
                    text.text,
                    ctx,
                    p.stride,
                    p.max_tokens,
                    adds_bos(tokenizer),
                )
        return self._plans[model.key]

    def joined_ids(self, model: ModelUnderTest) -> torch.Tensor:
        """The whole joined test split as the model's tokens (the long-context stretches read it)."""
        if not self._by_document():
            self.prefetch(model)
            return self._corpus_tokens[model.key].result()["ids"]
        return self._tokenized_corpus(model, self.corpus.text(), joined=True)["ids"]
