"""The daemon's own database: tables, engine, migrations."""
