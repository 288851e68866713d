"""quant_fixtures: measure, and gate releases on, the harm quantization does to a language model."""

from quant_fixtures.cpu_kernels import pin_before_torch

# Before anything imports torch (pytest loads the plugin entry point first): CPU numbers the same
# on every x86-64 CPU (cpu_kernels.py says why and how to opt out).
pin_before_torch()
