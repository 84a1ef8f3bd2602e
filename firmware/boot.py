"""Runs first at every boot. Deliberately does nothing that can fail or hang yet.

The power-fail-safe mount with a degraded mode (issue "Persistence") lands here; until then
the board's own boot has mounted the filesystem and main.py runs next.
"""
