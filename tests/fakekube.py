"""A Kubernetes API server on 127.0.0.1 that holds only Secrets and StatefulSets, enough for Helm's `lookup`."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeKube"]

_OBJECT = re.compile(r"(/api/v1|/apis/apps/v1)/namespaces/([^/]+)/(secrets|statefulsets)/([^/?]+)")


def _resources(group_version: str, kind: str, plural: str) -> dict[str, Any]:
    """What discovery tells client-go about a group version: `lookup` maps a kind to its resource with it."""
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": [{"name": plural, "singularName": kind.lower(), "namespaced": True, "kind": kind,
                           "verbs": ["get", "list"]}]}


_DISCOVERY = {"/api/v1": _resources("v1", "Secret", "secrets"),
              "/apis/apps/v1": _resources("apps/v1", "StatefulSet", "statefulsets")}


class FakeKube:
    """`secrets`: (namespace, name) -> the Secret's data as the API gives it (base64 values);
    `statefulsets`: (namespace, name) -> the StatefulSet as the API gives it (apiVersion, kind and
    metadata added when missing).

    Anything but discovery of v1 and apps/v1 and a GET of one of those is a 404, as for a missing object.
    """

    def __init__(self, secrets: dict[tuple[str, str], dict[str, str]] | None = None,
                 statefulsets: dict[tuple[str, str], dict[str, Any]] | None = None) -> None:
        self.secrets = dict(secrets or {})
        self.statefulsets = dict(statefulsets or {})
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
        if path in _DISCOVERY:
            return 200, _DISCOVERY[path]
        match = _OBJECT.fullmatch(path)
        if match:
            prefix, namespace, plural, name = match.groups()
            if (prefix, plural) == ("/api/v1", "secrets") and (namespace, name) in self.secrets:
                return 200, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                             "metadata": {"name": name, "namespace": namespace},
                             "data": self.secrets[namespace, name]}
            if (prefix, plural) == ("/apis/apps/v1", "statefulsets") and (namespace, name) in self.statefulsets:
                return 200, {"apiVersion": "apps/v1", "kind": "StatefulSet",
                             "metadata": {"name": name, "namespace": namespace}} | self.statefulsets[namespace, name]
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
