"""Nothing to register here: the plugin (quant_fixtures.plugin) is a pytest11 entry point of the
installed package (pyproject.toml), so its options work from any directory."""
