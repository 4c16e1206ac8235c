"""Adapters: settings, database, broker, middleware, providers, CLI."""
