"""The run-wide inputs of the passes, each read once per run: the WikiText-2 text, the prompt suite
and the environment's fingerprint. What is known about each model is in session/model_facts.py, the
corpus each model scores in session/corpus_plans.py."""

from __future__ import annotations

from quant_fixtures.inputs.prompts import Prompt, load_prompt_suite, suite_sha256
from quant_fixtures.inputs.wikitext import EvalText, load_wikitext2_test
from quant_fixtures.inputs.wikitext_documents import wikitext_pages
from quant_fixtures.json_types import JsonObject
from quant_fixtures.settings import PromptProtocol


class CorpusText:
    """The WikiText-2 test split from ``dataset_source``, and its document-level pages."""

    def __init__(self, dataset_source: str) -> None:
        self.dataset_source = dataset_source
        self._text: EvalText | None = None
        self._pages: list[str] | None = None

    def text(self) -> EvalText:
        if self._text is None:
            self._text = load_wikitext2_test(self.dataset_source)
        return self._text

    def pages(self) -> list[str]:
        """The document-level pages of the split (lm-eval's protocol), rebuilt once."""
        if self._pages is None:
            self._pages = wikitext_pages(self.text().rows)
        return self._pages


class PromptSuite:
    """The prompts of the run (the suite file, filtered by category) and the file's digest."""

    def __init__(self, protocol: PromptProtocol) -> None:
        self.protocol = protocol
        self._prompts: list[Prompt] | None = None
        self._sha256: str | None = None

    def use(self, prompts: list[Prompt] | None) -> None:
        """The suite as the command line validated it (so it is parsed once)."""
        if prompts is not None:
            self._prompts = prompts

    def prompts(self) -> list[Prompt]:
        if self._prompts is None:
            self._prompts = load_prompt_suite(self.protocol.path, self.protocol.categories)
        return self._prompts

    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = suite_sha256(self.protocol.path)
        return self._sha256


class RunEnvironment:
    """This run's fingerprint (versions, device, CPU ISA), taken once, when first asked for."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._fingerprint: JsonObject | None = None

    def fingerprint(self) -> JsonObject:
        if self._fingerprint is None:
            from quant_fixtures.environment import fingerprint

            self._fingerprint = fingerprint(self.device)
        return self._fingerprint

    def numerics(self) -> JsonObject:
        """The parts of the environment that change FP16 numbers: in every stored reference's key."""
        from quant_fixtures.environment import numerics_key

        return numerics_key(self.fingerprint())
