"""Persistence: SQLAlchemy 2 Core on SQLite (WAL, the embedded default) or PostgreSQL.

``tables`` holds the schema (migrated by Alembic), ``db`` the engine and migrations, and one
module per aggregate holds its queries. Only the core uses the store: connectors never do.
"""
