"""The verifiable deletion ledger: canonical entries, an RFC 6962 tree, signed checkpoints."""
