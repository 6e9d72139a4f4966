"""Benchmark suite for wsgate: `python -m bench` (see bench/README.md)."""
