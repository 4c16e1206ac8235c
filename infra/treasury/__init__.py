"""The treasury engine's adapters (SPEC §3); its handlers are ``services/buffers.py``,
``services/conversions.py``, ``services/providers.py`` and ``services/overrides.py``.

- ``store``: its tables (Core), and ``repository``: the repositories the unit of work hands
  out (``uow.buffers``, ``uow.providers``, ``uow.conversions``).
- ``cycle``: the buffer alerts and the auto-rebalancing setting.
- ``jobs``: the steps the handlers share: creating a conversion job, its lock, how it ends,
  its first own poll and the stale flag.
- ``conditions``: what the alert sweep evaluates every minute (listed in ``infra.conditions``).
- ``views``: what operators see (``ballast buffers|providers|conversions``), from the SQL
  views ``v_buffer_status``, ``v_provider_health``, ``v_active_conversion_jobs``.
- ``overrides``: the levers' audit (``treasury_overrides``).
- ``reconcile``: the ledger against custodian, providers' books and our own jobs.
- ``callbacks``: the endpoint receiving signed provider callbacks (``ballast callbacks serve``),
  which hands a verified one to the ``apply_conversion_callback`` step.
"""
