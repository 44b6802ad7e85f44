"""Side-by-side performance measurements (issue 7); run with ``python -m benchmarks``."""
