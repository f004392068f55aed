"""Helpers that tests and benchmarks share (importable, so subprocesses can find them)."""
