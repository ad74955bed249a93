"""A Kubernetes API server on 127.0.0.1 that holds only Secrets, enough for Helm's `lookup`."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeKube"]

_SECRET = re.compile(r"/api/v1/namespaces/([^/]+)/secrets/([^/?]+)")
# What discovery tells client-go about the core group: `lookup "v1" "Secret"` maps the kind to it.
_CORE = {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
         "resources": [{"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret",
                        "verbs": ["get", "list"]}]}


class FakeKube:
    """`secrets`: (namespace, name) -> the Secret's data as the API gives it (base64 values).

    Anything but discovery of v1 and a GET of one Secret is a 404, as for a missing Secret.
    """

    def __init__(self, secrets: dict[tuple[str, str], dict[str, str]] | None = None) -> None:
        self.secrets = dict(secrets or {})
        self.paths: list[str] = []  # every path asked, in order
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> "FakeKube":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        self.paths.append(path)
        path = path.partition("?")[0]
        if path == "/api/v1":
            return 200, _CORE
        match = _SECRET.fullmatch(path)
        if match and match.groups() in self.secrets:
            namespace, name = match.groups()
            return 200, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                         "metadata": {"name": name, "namespace": namespace},
                         "data": self.secrets[namespace, name]}
        return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                     "message": f"{path} not found", "code": 404}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        kube = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = kube.answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        return Handler
