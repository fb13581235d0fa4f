"""Benchmarks: one module per headline figure; ``python -m benchmarks`` runs them all."""
