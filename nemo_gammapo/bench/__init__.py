"""Benchmarks: every comparison is measured side by side in one run and reported as a ratio."""
