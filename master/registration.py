"""What the master accepts as a worker registration: an id and URL by p2pcache.members' rules, sane
numbers, the sending process's instance name, no takeovers."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from typing import NamedTuple

import msgpack

from p2pcache.members import MAX_WEIGHT, InvalidRegistration, check_id, check_url
from p2pcache.ring import DRAINING, UP, WorkerInfo
from p2pcache.ringreport import RingReport
from p2pcache.sizes import MAX_SIZE, format_size

__all__ = ["InvalidRegistration", "Takeover", "Registration", "parse_worker", "parse_registration", "check_takeover",
           "STATES"]

# A worker owns chunks only if it can keep them: one that a read is streaming stays (it is
# pinned) while the read's next chunk is filled, and each file has a trailer past its chunk.
MIN_CHUNKS = 2
STATES = frozenset({UP, DRAINING})
_FIELDS = {f.name for f in fields(WorkerInfo)}
INSTANCE = re.compile(r"[A-Za-z0-9._-]{1,64}")  # a worker process's name, fresh at each start (MasterClient)


class Registration(NamedTuple):
    """A heartbeat: the worker, the `instance` that sent it (None from workers that do not say: they
    are from before instances), the unpins it has had (`unpins`: `[master_id, seq]` of the last, `[]`
    for none; None from workers that do not take them: master/unpins.py), and the ring it holds
    (`ring`, sent to a master that has not given it one: master/earlier.py; None otherwise)."""

    worker: WorkerInfo
    instance: str | None
    unpins: list | None
    ring: RingReport | None


class Takeover(ValueError):
    """The id is registered at another URL, and the request could not prove it is the cluster's (409)."""


def parse_worker(body: bytes, content_type: str, chunk_size: int) -> WorkerInfo:
    """A WorkerInfo from a msgpack (or JSON) registration to a ring of `chunk_size` chunks;
    unknown fields are ignored."""
    return parse_registration(body, content_type, chunk_size).worker


def parse_registration(body: bytes, content_type: str, chunk_size: int) -> Registration:
    """A heartbeat, checked whole: InvalidRegistration (400) for any part of it malformed."""
    try:
        data = json.loads(body) if content_type == "application/json" else msgpack.unpackb(body)
    except Exception as exc:  # msgpack and json raise a variety of errors on bad input
        raise InvalidRegistration(f"not a {content_type or 'msgpack'} document: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRegistration("want a map of worker fields")
    missing = {"id", "url"} - data.keys()
    if missing:
        raise InvalidRegistration(f"missing {', '.join(sorted(missing))}")
    info = WorkerInfo(**{k: v for k, v in data.items() if k in _FIELDS})
    check_id(info.id)
    check_url(info.url)
    if not _int(info.weight) or not 1 <= info.weight <= MAX_WEIGHT:
        raise InvalidRegistration(f"weight must be an integer from 1 to {MAX_WEIGHT}")
    if not _int(info.capacity) or not 0 <= info.capacity <= MAX_SIZE:
        raise InvalidRegistration("capacity must be a non-negative integer (bytes)")
    if info.capacity < MIN_CHUNKS * chunk_size:
        raise InvalidRegistration(f"capacity must hold {MIN_CHUNKS} chunks, {MIN_CHUNKS * chunk_size} bytes at the "
                                  f"master's --chunk-size {format_size(chunk_size)}, not {info.capacity}")
    if info.state not in STATES:
        raise InvalidRegistration(f"state must be one of {', '.join(sorted(STATES))}")
    instance = data.get("instance")
    if instance is not None and not (isinstance(instance, str) and INSTANCE.fullmatch(instance)):
        raise InvalidRegistration("instance must be 1-64 characters of A-Z a-z 0-9 . _ -")
    seen = data.get("unpins")
    if seen is not None and not (seen == [] or isinstance(seen, list) and len(seen) == 2
                                 and isinstance(seen[0], str) and _int(seen[1]) and seen[1] >= 0):
        raise InvalidRegistration("unpins must be [] or [master_id, seq]")
    ring = data.get("ring")
    return Registration(info, instance, seen, None if ring is None else RingReport.from_wire(ring))


def check_takeover(current: WorkerInfo | None, new: WorkerInfo, authenticated: bool) -> None:
    """A live id keeps its URL unless the request was signed with the cluster secret.

    With the secret, a new URL is a restarted pod with a new address; without,
    it could be anyone redirecting that worker's chunks to their own server.
    """
    if current is not None and current.url != new.url and not authenticated:
        raise Takeover(f"worker id {new.id!r} is registered at {current.url}; moving it to another URL "
                       f"needs the cluster secret, or the old registration to leave or expire")


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
