"""The treasury engine (SPEC §3): buffers, the settlement cycle, conversion jobs.

- ``store``: its tables.
- ``cycle``: upstream buffer flows, the settlement cycle, buffer alerts.
- ``jobs``: creating a conversion job, its lock, and how it ends.
- ``submission``: handing a pending job to a provider (``submit_conversion``).
- ``polling``: following what a provider holds (``poll_conversion``), stale jobs.
- ``conditions``: what the alert sweep evaluates every minute (listed in ``infra.conditions``).
- ``views``: what operators see (``ballast buffers|providers|conversions``), from the SQL
  views ``v_buffer_status``, ``v_provider_health``, ``v_active_conversion_jobs``.
- ``overrides``: the operator's emergency levers (freeze/thaw, complete or fail by hand).
- ``reconcile``: the ledger against custodian, providers' books and our own jobs.
- ``callbacks``: the endpoint receiving signed provider callbacks (``ballast callbacks serve``).
"""
