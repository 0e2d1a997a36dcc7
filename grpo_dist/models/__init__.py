"""Locally built models (no hub is needed): the embedded default and benchmark sizes."""
