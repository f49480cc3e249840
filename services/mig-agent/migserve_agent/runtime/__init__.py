"""Runtimes: where an instance's engine and bridge run (processes now, Pods later)."""
