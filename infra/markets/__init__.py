"""Market payouts on PostgreSQL: the repository the unit of work hands out (``uow.markets``)
and the operator's view (SPEC §2).  The handlers are ``services/markets.py``."""
