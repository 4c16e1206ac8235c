"""Benchmarks of Ballast on the real services: ``bench/run [NAME…]`` (see bench/common.py)."""
