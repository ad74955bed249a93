"""An embedded S3-compatible server (moto's) on loopback, counting what it serves.

Used by `p2pcache local` when no endpoint is given, by the tests, and by the
benchmarks. The count is taken at the S3 server, not by the cache's metrics.
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["EmbeddedS3"]


class _Counting:
    """WSGI middleware: counts GET requests and the body bytes sent for them, and object HEADs.

    With `throttle` (bytes/s), object bytes leave at most that fast in total,
    to stand in for a remote object store.
    """

    def __init__(self, app, throttle: float = 0, fast_ranges: bool = False) -> None:
        self.app = app
        self.fast_ranges = fast_ranges
        self.lock = threading.Lock()
        self.get_requests = 0
        self.get_bytes = 0
        self.head_requests = 0  # HEADs of objects (not buckets)
        self.fast_gets = 0  # ranged GETs answered without moto
        self.throttle = throttle
        self._free_at = time.monotonic()  # when the throttled link is next idle

    def __call__(self, environ, start_response):
        is_object = "/" in environ.get("PATH_INFO", "").strip("/")  # path-style /bucket/key
        fast = self.fast_ranges and is_object and _ranged_get(environ)
        if fast:
            with self.lock:
                self.fast_gets += 1
        if environ.get("REQUEST_METHOD") == "HEAD" and is_object:
            with self.lock:
                self.head_requests += 1
        body = fast(start_response) if fast else self.app(environ, start_response)
        if environ.get("REQUEST_METHOD") != "GET" or not is_object:
            return body  # listings and other API calls are not object bytes
        with self.lock:
            self.get_requests += 1
        return self._count(body)

    def _count(self, body):
        try:
            for data in body:
                for piece in _split(data, 256 << 10) if self.throttle else (data,):
                    with self.lock:
                        self.get_bytes += len(piece)
                        if self.throttle:
                            now = time.monotonic()
                            self._free_at = max(self._free_at, now) + len(piece) / self.throttle
                            wait = self._free_at - now
                    if self.throttle and wait > 0:
                        time.sleep(wait)  # a server thread of its own: this paces one response
                    yield piece
        finally:
            if hasattr(body, "close"):
                body.close()


def _ranged_get(environ):
    """A plain ranged GET of a stored object, answered from its buffer; else None (moto answers).

    moto answers a ranged GET by copying the whole object and slicing it, so a
    range of a multi-GiB object costs the whole object. This reads just the
    range. Only the simple case: any condition other than a matching If-Match,
    a version, a part, or a range moto would refuse, is left to moto.
    """
    if environ.get("REQUEST_METHOD") != "GET" or "HTTP_RANGE" not in environ:
        return None
    if environ.get("QUERY_STRING", "") not in ("", "x-id=GetObject") or any(
            h in environ for h in ("HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE", "HTTP_IF_UNMODIFIED_SINCE")):
        return None
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    from .conditions import etag_matches
    from .errors import RangeNotSatisfiable
    from .ranges import parse_range

    bucket, _, key = environ["PATH_INFO"].lstrip("/").partition("/")
    try:
        obj = next(iter(s3_backends[DEFAULT_ACCOUNT_ID].values())).get_object(bucket, key)
        rng = parse_range(environ["HTTP_RANGE"], obj.size) if obj is not None else None
    except (RangeNotSatisfiable, LookupError, AttributeError, StopIteration):
        return None
    except Exception:  # moto's own "not found" errors: let moto answer them
        return None
    if rng is None or ("HTTP_IF_MATCH" in environ and not etag_matches(environ["HTTP_IF_MATCH"], obj.etag)):
        return None
    headers = [(k, str(v)) for k, v in obj.metadata.items() if k.lower() != "content-length"]
    headers += [("ETag", obj.etag), ("Last-Modified", obj.last_modified_RFC1123),
                ("Accept-Ranges", "bytes"), ("Content-Range", rng.content_range()),
                ("Content-Length", str(rng.length))]

    def respond(start_response):
        start_response("206 Partial Content", headers)
        return _read_window(obj, rng.start, rng.stop)

    return respond


def _read_window(obj, start: int, stop: int, piece: int = 1 << 20):
    pos = start
    while pos < stop:
        with obj.lock:
            obj._value_buffer.seek(pos)
            data = obj._value_buffer.read(min(piece, stop - pos))
        if not data:
            return
        pos += len(data)
        yield data


def _split(data: bytes, size: int):
    view = memoryview(data)
    for pos in range(0, len(view), size):
        yield bytes(view[pos:pos + size])


class EmbeddedS3:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, throttle: float = 0,
                 fast_ranges: bool = False) -> None:
        self._host, self._port, self._throttle, self._fast = host, port, throttle, fast_ranges
        self._server = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> "EmbeddedS3":
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication, MotoRequestHandler, create_backend_app,
        )
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self.counter = _Counting(DomainDispatcherApplication(create_backend_app), self._throttle,
                                 self._fast)
        self._server = make_server(self._host, self._port, self.counter, threaded=True,
                                   request_handler=MotoRequestHandler)
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="embedded-s3")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
        if self._thread:
            self._thread.join()

    @property
    def get_bytes(self) -> int:
        return self.counter.get_bytes

    @property
    def get_requests(self) -> int:
        return self.counter.get_requests

    @property
    def head_requests(self) -> int:
        return self.counter.head_requests

    def __enter__(self) -> "EmbeddedS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
