"""Benchmark suite: sweeps, timing, memory, byte models, reports, charts and the CLI."""
