"""Benchmarks and load tests, run from the checkout: `p2pcache bench`, `python -m loadtests.bench`, locust."""
