"""Alembic migrations: env.py and the versions, one file per schema change."""
