"""The treasury engine's adapters (SPEC §3); its handlers are ``services/buffers.py``,
``services/conversions.py``, ``services/providers.py`` and ``services/overrides.py``; the
steps they share (a job's creation, lock and end) ``services/jobs.py``; its alert
conditions ``services/treasury_conditions.py``.

- ``store``: its tables (Core), and ``repository``: the repositories the unit of work hands
  out (``uow.buffers``, ``uow.providers``, ``uow.conversions``).
- ``cycle``: the auto-rebalancing setting.
- ``views``: what operators see (``ballast buffers|providers|conversions``), from the SQL
  views ``v_buffer_status``, ``v_provider_health``, ``v_active_conversion_jobs``.
- ``overrides``: the levers' audit (``treasury_overrides``).
- ``reconcile``: the ledger against custodian, providers' books and our own jobs.
- ``callbacks``: the endpoint receiving signed provider callbacks (``ballast callbacks serve``),
  which hands a verified one to the ``apply_conversion_callback`` step.
"""
