"""Verifiable tasks shipped with the package (the embedded default's data)."""
