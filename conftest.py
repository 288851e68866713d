pytest_plugins = ["quant_fixtures.plugin"]
