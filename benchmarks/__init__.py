"""Benchmarks: ratios measured side by side in one run; results go to BENCHMARKS.md."""
