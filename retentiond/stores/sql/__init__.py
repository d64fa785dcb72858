"""SQL stores: row rules and dropped copies on PostgreSQL, MySQL/MariaDB and SQLite."""
