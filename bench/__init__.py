"""Benchmarks: each measures something a design decision rests on (see docs/benchmarks.md)."""
