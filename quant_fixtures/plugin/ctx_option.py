"""The --ctx option's help: what the number means under each perplexity protocol, and its default."""

from __future__ import annotations

# What --ctx sets under each --ppl-protocol (the windows: inputs/corpus_protocols.py), and the
# defaults of the protocols that do not take the config's ctx (plugin/cli.py build_settings and
# CONFIG_CTX_PROTOCOLS; session/corpus_plans.py CorpusPlans.ctx). tests/unit/test_plugin.py checks
# both against the code.
CTX_MEANINGS = {
    "nonoverlapping": "the length of each window, which scores ctx - 1 tokens",
    "strided": "the length of each window, the windows starting every --ppl-stride tokens",
    "llama.cpp": "llama-perplexity's n_ctx, the length of each chunk, whose second half is scored",
    "lm-eval": "lm-eval's max_length, the length of the rolling windows over each document",
}
CTX_OWN_DEFAULTS = {
    "llama.cpp": "512, llama-perplexity's",
    "lm-eval": "the model's maximum length, as lm-eval reads it",
}


def ctx_help() -> str:
    """The --ctx help: what the number means under each protocol, and its default there."""
    meanings = [
        f"{name}: {meaning} (default: {CTX_OWN_DEFAULTS.get(name, '[defaults].ctx of the suite config')})"
        for name, meaning in CTX_MEANINGS.items()
    ]
    return "tokens of perplexity context, capped at each model's maximum, by --ppl-protocol: " + "; ".join(meanings)
