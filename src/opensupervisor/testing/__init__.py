"""Deterministic stand-ins for the outside world, shipped for tests, benchmarks and demos."""
