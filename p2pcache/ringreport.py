"""The ring a worker holds, as it tells a restarted master in its heartbeats (master/earlier.py)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .members import MAX_WEIGHT, InvalidRegistration, check_id
from .ring import HISTORY, Owning, RingSnapshot
from .sizes import MAX_SIZE

__all__ = ["RingReport", "MAX_ENTRIES", "MAX_AGE"]

MASTER_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Workers named across the memberships of one report. A master takes heartbeats of up to 1 MiB
# (aiohttp's limit): 4096 entries of the longest ids (128 characters) are about 540 KiB. A
# ring of 1,000 workers reports its owners and three earlier memberships; a larger one reports
# fewer earlier memberships (the newest first), and one of more than 4096 owners none.
MAX_ENTRIES = 4096
MAX_AGE = 10 * 365 * 86400.0  # seconds since the ring was received; longer is no clock of ours


@dataclass(frozen=True)
class RingReport:
    """A ring by its name, its placement parameters and its memberships: the owning one first,
    then its history (newest first); `age`: seconds since the worker received it."""

    master_id: str
    epoch: int
    parameters: tuple[int, int, int, float]
    memberships: tuple[Owning, ...]
    age: float

    @classmethod
    def of(cls, ring: RingSnapshot, age: float) -> "RingReport | None":
        """`ring`'s report, with as many of its memberships as MAX_ENTRIES allows (None: not one)."""
        memberships: list[Owning] = []
        for owning in (ring.owning(), *ring.history):
            if sum(map(len, memberships)) + len(owning) > MAX_ENTRIES:
                break
            memberships.append(owning)
        if not memberships:
            return None
        return cls(ring.master_id, ring.epoch, ring.parameters(), tuple(memberships), min(max(age, 0.0), MAX_AGE))

    def to_wire(self) -> dict:
        return {"master_id": self.master_id, "epoch": self.epoch, "parameters": list(self.parameters),
                "memberships": [[list(entry) for entry in owning] for owning in self.memberships],
                "age": self.age}

    @classmethod
    def from_wire(cls, data: object) -> "RingReport":
        """A report from a heartbeat's `ring`; InvalidRegistration (400) saying what is wrong."""
        if not isinstance(data, dict):
            raise _invalid("want a map")
        master_id, epoch, age = data.get("master_id"), data.get("epoch"), data.get("age")
        if not isinstance(master_id, str) or not MASTER_ID.fullmatch(master_id):
            raise _invalid("master_id must be 1-64 characters of A-Z a-z 0-9 . _ -")
        if not _int(epoch) or not 0 <= epoch <= MAX_SIZE:
            raise _invalid("epoch must be a non-negative integer")
        if not _number(age) or not 0 <= age <= MAX_AGE:
            raise _invalid(f"age must be a number of seconds from 0 to {MAX_AGE:g}")
        return cls(master_id, epoch, _parameters(data.get("parameters")), _memberships(data.get("memberships")),
                   float(age))


def _parameters(value: object) -> tuple[int, int, int, float]:
    if not (isinstance(value, list) and len(value) == 4 and all(map(_int, value[:3])) and _number(value[3])):
        raise _invalid("parameters must be [chunk_size, replicas, vnodes, load]")
    return (value[0], value[1], value[2], float(value[3]))


def _memberships(value: object) -> tuple[Owning, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= 1 + HISTORY:
        raise _invalid(f"memberships must be a list of 1 to {1 + HISTORY} memberships")
    if not all(isinstance(owning, list) for owning in value):
        raise _invalid("each membership must be a list of [id, weight] pairs")
    if sum(map(len, value)) > MAX_ENTRIES:
        raise _invalid(f"memberships must name at most {MAX_ENTRIES} workers in all")
    return tuple(_owning(owning) for owning in value)


def _owning(pairs: list) -> Owning:
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise _invalid("each membership must be a list of [id, weight] pairs")
        try:
            check_id(pair[0])
        except InvalidRegistration as exc:
            raise _invalid(f"a worker {exc}") from None
        if not _int(pair[1]) or not 1 <= pair[1] <= MAX_WEIGHT:
            raise _invalid(f"a worker's weight must be an integer from 1 to {MAX_WEIGHT}")
    owning = tuple(sorted((wid, weight) for wid, weight in pairs))
    if len({wid for wid, _ in owning}) != len(owning):
        raise _invalid("a membership names a worker twice")
    return owning


def _invalid(reason: str) -> InvalidRegistration:
    return InvalidRegistration(f"ring report: {reason}")


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return _int(value) or isinstance(value, float) and math.isfinite(value)
