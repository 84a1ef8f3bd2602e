"""Dosis host tools: the `dosis` command and the importable API behind it."""

from dosiscore import VERSION as __version__

__all__ = ["__version__"]
