"""Benchmark suite of the performance bars (ARCHITECTURE.md section 5); run with `python -m bench`."""
