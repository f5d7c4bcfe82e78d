"""Pretend an installed distribution is missing, as ``importlib.metadata`` reports it."""

from __future__ import annotations


def hide_distribution(monkeypatch, name: str) -> None:
    """Make ``importlib.metadata.version(name)`` raise ``PackageNotFoundError`` for the rest of the test (what
    ``multiverse.extras.missing_distributions`` reads); other distributions are unchanged."""
    from importlib import metadata

    real = metadata.version

    def version(dist):
        if dist == name:
            raise metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(metadata, "version", version)
