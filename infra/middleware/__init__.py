"""Dramatiq middleware of Ballast: log context, retries and dead letters, metrics."""
