"""File stores: expired files and dropped directory copies under a store root, walked safely."""
