"""Pins on open chunk files: how many readers hold each, so its fd is closed only after the last.

The store (evicted chunks) and a serving process's open files (files gone from their path)
both keep a file open while it is read and close it when its last reader is done.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

__all__ = ["Pins"]

T = TypeVar("T")


class Pins:
    def __init__(self, released: Callable[[str], None]) -> None:
        self._held: dict[str, int] = {}
        self._released = released  # called with a name once its last reader is done

    def __contains__(self, name: str) -> bool:
        return name in self._held

    def __len__(self) -> int:
        """Names held."""
        return len(self._held)

    def holding(self, name: str, file: T) -> "_Pin[T]":
        """A context manager that pins `name` while its block runs and gives `file`."""
        return _Pin(self, name, file)

    def _take(self, name: str) -> None:
        self._held[name] = self._held.get(name, 0) + 1

    def _let_go(self, name: str) -> None:
        if self._held[name] > 1:
            self._held[name] -= 1
        else:
            del self._held[name]
            self._released(name)


class _Pin(Generic[T]):
    __slots__ = ("_pins", "_name", "_file")

    def __init__(self, pins: Pins, name: str, file: T) -> None:
        self._pins, self._name, self._file = pins, name, file

    def __enter__(self) -> T:
        self._pins._take(self._name)
        return self._file

    def __exit__(self, *exc: object) -> None:
        self._pins._let_go(self._name)
