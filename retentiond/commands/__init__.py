"""One module per user action; each function is both the CLI command and the Python API."""
