"""Sealed copies: the age format, sealing and unsealing, and their registration in the keystore."""
