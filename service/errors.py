"""The exceptions this package raises, one small hierarchy.

Every message names the field, says what was expected and what arrived:
``"W must be H x H = 100 x 100, got 100 x 99"``.
"""

from __future__ import annotations

__all__ = ["BpttError", "InputError", "ComputeError"]


class BpttError(Exception):
    """Base class of every error raised by this package."""


class InputError(BpttError, ValueError):
    """An input is malformed, of the wrong shape, or inconsistent with another."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ComputeError(BpttError, ArithmeticError):
    """The computation overflowed: the inputs are too large for the dtype."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field
