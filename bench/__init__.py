"""Benches: run as scripts (`python bench/e2e.py`); the chaos run is also imported by the tests."""
