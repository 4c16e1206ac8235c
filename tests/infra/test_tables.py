"""infra.db.tables mirrors the migrated schema: every table, column, type, nullability and key."""

from __future__ import annotations

from sqlalchemy import Column, MetaData, Table, inspect, text
from sqlalchemy.dialects import postgresql

from infra.db import tables

#: Alembic's own bookkeeping, not part of the schema the code reads or writes.
NOT_MIRRORED = {"alembic_version"}

_PG = postgresql.dialect()


def _type(t) -> str:
    return t.compile(dialect=_PG)


def _has_default(reflected: dict) -> bool:
    """A server default other than a serial column's sequence."""
    d = reflected.get("default")
    return d is not None and not d.startswith("nextval(")


def schema_differences(metadata: MetaData, conn) -> list[str]:
    """What the Core definitions in ``metadata`` and the database ``conn`` disagree on."""
    insp = inspect(conn)
    db_tables = set(insp.get_table_names()) - NOT_MIRRORED
    core_tables = set(metadata.tables)
    diffs = [f"{t}: in the database, not in infra.db.tables" for t in sorted(db_tables - core_tables)]
    diffs += [f"{t}: in infra.db.tables, not in the database" for t in sorted(core_tables - db_tables)]
    for name in sorted(db_tables & core_tables):
        core: Table = metadata.tables[name]
        db_cols = {c["name"]: c for c in insp.get_columns(name)}
        for col in sorted(set(db_cols) - set(core.c.keys())):
            diffs.append(f"{name}.{col}: in the database, not in infra.db.tables")
        for col in sorted(set(core.c.keys()) - set(db_cols)):
            diffs.append(f"{name}.{col}: in infra.db.tables, not in the database")
        for col in sorted(set(db_cols) & set(core.c.keys())):
            have: Column = core.c[col]
            want = db_cols[col]
            if _type(have.type) != _type(want["type"]):
                diffs.append(f"{name}.{col}: type {_type(have.type)}, database {_type(want['type'])}")
            if have.nullable != want["nullable"]:
                diffs.append(f"{name}.{col}: nullable={have.nullable}, database {want['nullable']}")
            if (have.server_default is not None) != _has_default(want):
                diffs.append(f"{name}.{col}: server default {have.server_default is not None}, "
                             f"database {want.get('default')!r}")
        db_pk = insp.get_pk_constraint(name)["constrained_columns"]
        core_pk = [c.name for c in core.primary_key.columns]
        if sorted(db_pk) != sorted(core_pk):
            diffs.append(f"{name}: primary key {core_pk}, database {db_pk}")
        db_fks = {(tuple(fk["constrained_columns"]), fk["referred_table"],
                   tuple(fk["referred_columns"])) for fk in insp.get_foreign_keys(name)}
        core_fks = {(tuple(e.parent.name for e in fk.elements), fk.referred_table.name,
                     tuple(e.column.name for e in fk.elements)) for fk in core.foreign_key_constraints}
        for fk in sorted(db_fks ^ core_fks):
            where = "database" if fk in db_fks else "infra.db.tables"
            diffs.append(f"{name}: foreign key {fk} only in the {where}")
    return diffs


def test_core_tables_equal_the_migrated_schema(engine):
    with engine.connect() as conn:
        assert schema_differences(tables.metadata, conn) == []


def test_a_migrated_column_the_core_tables_lack_is_a_difference(engine):
    with engine.connect() as conn, conn.begin() as txn:
        conn.execute(text("ALTER TABLE console_settings ADD COLUMN note text NOT NULL DEFAULT ''"))
        diffs = schema_differences(tables.metadata, conn)
        txn.rollback()
    assert diffs == ["console_settings.note: in the database, not in infra.db.tables"]


def test_a_new_table_or_a_drifted_column_is_a_difference(engine):
    with engine.connect() as conn, conn.begin() as txn:
        conn.execute(text("CREATE TABLE tables_test_extra (id bigint PRIMARY KEY)"))
        conn.execute(text("ALTER TABLE console_settings ALTER COLUMN value DROP NOT NULL"))
        diffs = schema_differences(tables.metadata, conn)
        txn.rollback()
    assert diffs == ["tables_test_extra: in the database, not in infra.db.tables",
                     "console_settings.value: nullable=False, database True"]


def test_a_core_column_the_database_lacks_is_a_difference(engine):
    copy = MetaData()
    for t in tables.metadata.sorted_tables:
        t.to_metadata(copy)
    copy.tables["outbox"].append_column(Column("extra", postgresql.BIGINT))
    with engine.connect() as conn:
        assert schema_differences(copy, conn) == [
            "outbox.extra: in infra.db.tables, not in the database"]
