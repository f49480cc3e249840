"""Fakes at migserve's seams (never patches of third-party internals)."""
