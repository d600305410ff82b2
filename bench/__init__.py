"""Benchmark suite of the performance bars (see bench/README.md); run with `python -m bench`."""
