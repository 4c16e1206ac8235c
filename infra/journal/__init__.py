"""Payment matching on PostgreSQL: the repository (``repository``), the matching run, the
admin's link and cycle opening (``matching``), the operator views (``views``) and the
unmatched-payments alert condition (``conditions``, listed in ``services.conditions``)."""
