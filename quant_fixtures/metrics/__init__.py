"""Numerical metrics comparing a reference (FP16) model with a quantized candidate."""
