"""Alembic migrations of the state database (shipped inside the package so `init` finds them)."""
