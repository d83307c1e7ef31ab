"""Alembic migrations for the service's database (packaged; located by `shared.migrate`)."""
