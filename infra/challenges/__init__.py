"""Treasury balancing on PostgreSQL: the repository (``repository``), the shadow
persona pool (``personas``) and the operator views (``views``)."""
