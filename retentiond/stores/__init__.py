"""Stores: where data lives (SQL databases, file trees, sealed copies) and how it is removed."""
