"""The treasury engine (SPEC §3): buffers, the settlement cycle, conversion jobs.

- ``store``: its tables.
- ``cycle``: upstream buffer flows, the settlement cycle, buffer alerts.
- ``jobs``: a conversion job's life with its provider.
- ``conditions``: what the alert sweep evaluates every minute.
- ``views``: what operators see (``ballast buffers|providers|conversions``).
"""

from infra.treasury import conditions  # noqa: F401  (registers the alert conditions)
