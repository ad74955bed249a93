"""The chart's rendered master and worker pods, run as local processes, form a working cluster."""

from __future__ import annotations

import json
import os
import queue
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import yaml
from moto.server import ThreadedMotoServer

from certs import self_signed
from helm_render import (
    CHART,
    RELEASE,
    container_env,
    expand_vars,
    find,
    find_one,
    load_chart,
    manifests,
    pod_template,
    render,
    secret_files,
)

BUCKET, KEY = "models", "llama/model-00001.safetensors"
CHUNK = 1 << 20
READY = re.compile(r"p2pcache (master|worker) ready url=(\S+)")


class Pod:
    """One rendered container run as a local process, the way the kubelet would start it."""

    def __init__(self, name: str, template: dict[str, Any], objects: list[dict[str, Any]], root: Path):
        self.name = name
        self.spec = template["spec"]
        (self.container,) = self.spec["containers"]
        self.env = container_env(self.container, objects, pod_name=name)
        self.root = root / name
        self.root.mkdir()
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()

    def argv(self) -> list[str]:
        entrypoint = self.container.get("command") or image_entrypoint()
        return [expand_vars(arg, self.env) for arg in entrypoint + self.container.get("args", [])]

    def start(self, argv: list[str]) -> None:
        """Volumes become directories under the pod's root; only our process env is used."""
        for mount in self.container.get("volumeMounts", []):
            (self.root / mount["name"]).mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "P2PCACHE_"))}
        env.update(self.env)
        executable = shutil.which(argv[0], path=str(Path(sys.executable).parent))
        assert executable, f"{argv[0]} is not installed next to {sys.executable}"
        self.stderr = open(self.root / "stderr.log", "w")
        self.proc = subprocess.Popen([executable, *argv[1:]], env=env, cwd=self.root, text=True,
                                     stdout=subprocess.PIPE, stderr=self.stderr)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def volume_path(self, container_path: str) -> str:
        """Map a path inside the container to the directory standing in for its volume."""
        for mount in self.container.get("volumeMounts", []):
            if container_path == mount["mountPath"] or container_path.startswith(mount["mountPath"] + "/"):
                return str(self.root / mount["name"]) + container_path[len(mount["mountPath"]):]
        raise AssertionError(f"{container_path} is not on a volume of {self.name}")

    def ready_url(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.proc.poll() is None, f"{self.name} exited:\n{self.logs()}"
                continue
            if match := READY.search(line):
                return match.group(2)
        raise AssertionError(f"{self.name} printed no ready line in {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        self.stderr.flush()
        return (self.root / "stderr.log").read_text()[-4000:]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc:
            self.stderr.close()


def image_entrypoint() -> list[str]:
    dockerfile = (CHART.parent.parent / "Dockerfile").read_text()
    (entrypoint,) = re.findall(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M)
    return json.loads(entrypoint)


def rewrite(argv: list[str], pod: Pod, replace: dict[str, str | None]) -> list[str]:
    """Replace (or drop, with None) `--flag=value` args; re-root args that name volume paths."""
    out = []
    for arg in argv:
        flag, _, value = arg.partition("=")
        if flag in replace:
            if replace[flag] is not None:
                out.append(f"{flag}={replace[flag]}")
        elif value.startswith("/"):
            out.append(f"{flag}={pod.volume_path(value)}")
        else:
            out.append(arg)
    return out


def flag(argv: list[str], name: str) -> str:
    (value,) = [arg.split("=", 1)[1] for arg in argv if arg.startswith(f"--{name}=")]
    return value


def http(method: str, url: str, headers: dict[str, str] | None = None,
         context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def poll(probe, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except OSError as error:  # not listening yet, or refused
            last = error
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout}s; last: {last!r}")


def probe_url(pod: Pod, url: str, probe: str) -> str:
    path = pod.container[probe]["httpGet"]["path"]
    return url + path  # the probe's named port is the --listen port (test_helm_chart checks it)


def terminate_like_the_kubelet(pod: Pod) -> None:
    """The kubelet runs preStop, then sends SIGTERM; both share the grace period.

    The preStop sleep only gives the endpoints time to drop the pod, so the process must
    drain and exit 0 within what is left of the grace period after it.
    """
    pre_stop = pod.container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    budget = pod.spec["terminationGracePeriodSeconds"] - int(pre_stop[1])
    pod.proc.send_signal(signal.SIGTERM)
    try:
        code = pod.proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{pod.name} still running {budget}s after SIGTERM:\n{pod.logs()}") from None
    assert code == 0, pod.logs()


@pytest.fixture
def moto_s3():
    """A fresh S3 of our own (conftest's session `s3` is shared with the in-process tests)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def seeded(moto_s3: str, data: bytes) -> bytes:
    """`data` as s3://BUCKET/KEY in the S3 server."""
    client = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1",
                          aws_access_key_id="moto-id", aws_secret_access_key="moto-secret")
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key=KEY, Body=data)
    return data


def test_rendered_pods_form_a_working_cluster(moto_s3, tmp_path):
    data = seeded(moto_s3, random.Random(4).randbytes(3 * CHUNK + 123_457))

    values = {"cluster": {"chunkSize": "1MiB"},
              "s3": {"endpoint": moto_s3, "accessKeyId": "moto-id", "secretAccessKey": "moto-secret",
                     "allowedBuckets": [BUCKET]},
              "preload": {"urls": [f"s3://{BUCKET}/llama/"], "pin": True}}
    with load_chart() as chart:
        objects = manifests(render(chart, values))
    sts = find_one(objects, "StatefulSet")
    headless = sts["spec"]["serviceName"]
    master = Pod(f"{RELEASE}-master-7d9c8-x2x4q", pod_template(objects, "Deployment"), objects, tmp_path)
    workers = [Pod(f"{sts['metadata']['name']}-{i}", pod_template(objects, "StatefulSet"), objects, tmp_path)
               for i in range(2)]
    pods = [master, *workers]
    try:
        master.start(rewrite(master.argv(), master, {"--listen": "127.0.0.1:0"}))
        master_url = master.ready_url()
        poll(lambda: http("GET", probe_url(master, master_url, "readinessProbe"))[0] == 200,
             10, "master readiness probe")

        worker_urls = []
        for worker in workers:
            argv = worker.argv()
            assert flag(argv, "id") == worker.name  # $(POD_NAME) expanded from the fieldRef
            assert flag(argv, "advertise") == f"http://{worker.name}.{headless}.ml.svc.cluster.local:8080"
            # From the chart's Secret (moto accepts any keys, so check them here).
            assert (worker.env["AWS_ACCESS_KEY_ID"], worker.env["AWS_SECRET_ACCESS_KEY"]) == (
                "moto-id", "moto-secret")
            # No cluster DNS here: the worker advertises the loopback address it listens on.
            worker.start(rewrite(argv, worker, {"--listen": "127.0.0.1:0", "--master": master_url,
                                                "--advertise": None}))
            worker_urls.append(worker.ready_url())
        for worker, url in zip(workers, worker_urls):
            poll(lambda: http("GET", probe_url(worker, url, "livenessProbe"))[0] == 200, 10, "liveness")
            poll(lambda: http("GET", probe_url(worker, url, "readinessProbe"))[0] == 200, 30,
                 f"{worker.name} ready (joined the ring)")

        ring = json.loads(http("GET", f"{master_url}/ring?format=json")[2])
        assert sorted(w["id"] for w in ring["workers"]) == [w.name for w in workers]
        # The chart's Secret closed the cluster: the pods share it, a stranger cannot register.
        assert master.env["P2PCACHE_CLUSTER_SECRET"] == workers[0].env["P2PCACHE_CLUSTER_SECRET"]
        assert http("POST", f"{master_url}/workers")[0] == 401
        assert http("DELETE", f"{master_url}/workers/{workers[0].name}")[0] == 401
        assert ring["chunk_size"] == CHUNK

        # The preload Job, run like its pod, fills (and pins) the prefix through the master with the Secret.
        job = Pod(f"{RELEASE}-preload-abcde", pod_template(objects, "Job"), objects, tmp_path)
        pods.append(job)
        assert job.env["P2PCACHE_CLUSTER_SECRET"] == master.env["P2PCACHE_CLUSTER_SECRET"]
        job.start(rewrite(job.argv(), job, {"--master": master_url}))
        assert job.proc.wait(timeout=60) == 0, job.logs()
        summary = job.lines.get(timeout=10)  # its one stdout line
        assert " done: 1/1 objects" in summary and ", pinned" in summary, summary
        status = json.loads(subprocess.run(
            [sys.executable, "-m", "p2pcache", "status", f"s3://{BUCKET}/llama/", "--json", "--master", master_url],
            env={**os.environ, "P2PCACHE_CLUSTER_SECRET": master.env["P2PCACHE_CLUSTER_SECRET"]},
            capture_output=True, text=True, timeout=60, check=True).stdout)
        assert [(o["key"], o["cached"], o["pinned"]) for o in status["objects"]] == [(KEY, 1.0, 1.0)]

        first, last = 1000, 3 * CHUNK + 99  # spans four chunks, owned by both workers
        for url in worker_urls:  # any worker behind the client Service answers
            status, headers, body = http("GET", f"{url}/{BUCKET}/{KEY}", {"Range": f"bytes={first}-{last}"})
            assert status == 206, body[:300]
            assert headers["Content-Range"] == f"bytes {first}-{last}/{len(data)}"
            assert body == data[first:last + 1]

        terminate_like_the_kubelet(workers[1])

        def survivor_serves_everything():
            status, _, body = http("GET", f"{worker_urls[0]}/{BUCKET}/{KEY}", {"Range": "bytes=0-"})
            return status == 206 and body == data

        ttl = int(flag(master.argv(), "worker-ttl"))
        poll(survivor_serves_everything, ttl + 10, "the remaining worker serving the whole object")
    finally:
        for pod in reversed(pods):  # only the processes this test started, workers first
            pod.stop()


def readme_certificate_names() -> list[str]:
    """The names the README's cert-manager Certificate gives the release `p2pcache` in `ml`."""
    readme = (CHART.parent.parent / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "kind: Certificate" in b]
    return yaml.safe_load(textwrap.dedent(block))["spec"]["dnsNames"]


def private_ca_certificate() -> dict[str, str]:
    """A kubernetes.io/tls Secret's data: a self-signed CA certificate for the names the README has
    the certificate hold (and 127.0.0.1, where the tests reach the pods), its key, and itself as
    ca.crt (no system store trusts it, as with a private CA)."""
    pem, key = self_signed("p2pcache chart test CA", tuple(readme_certificate_names()))
    return {"tls.crt": pem, "ca.crt": pem, "tls.key": key}


POD_IP = "10.42.0.13"  # what Prometheus knows a scraped pod by: no name the certificate holds


def scrape(endpoint: dict[str, Any], port: int, secrets: dict[str, dict[str, str]]) -> bytes:
    """GET a ServiceMonitor endpoint's path from the pod listening on `port` as Prometheus does: over
    its `scheme` (http unless given), and for https verifying the certificate with `tlsConfig`'s CA
    (a Secret's key) at its `serverName`, else at the pod's IP."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if endpoint.get("scheme", "http") == "https":
        tls = endpoint.get("tlsConfig", {})
        ca = tls.get("ca", {}).get("secret")
        context = ssl.create_default_context(cadata=secrets[ca["name"]][ca["key"]] if ca else None)
        sock = context.wrap_socket(sock, server_hostname=tls.get("serverName", POD_IP))
    with sock:
        sock.sendall(f"GET {endpoint['path']} HTTP/1.1\r\nHost: {POD_IP}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_rendered_tls_pods_verify_each_other_with_the_secrets_ca(moto_s3, tmp_path):
    """With a private CA the master must trust the workers too: preload and status go through it."""
    data = seeded(moto_s3, random.Random(5).randbytes(2 * CHUNK + 17))
    tls_secret = {"p2pcache-tls": private_ca_certificate()}
    values = {"cluster": {"chunkSize": "1MiB"}, "tls": {"enabled": True, "existingSecret": "p2pcache-tls"},
              "s3": {"endpoint": moto_s3, "accessKeyId": "moto-id", "secretAccessKey": "moto-secret"},
              "preload": {"urls": [f"s3://{BUCKET}/llama/"], "pin": True, "waitReady": 20},
              "metrics": {"serviceMonitor": {"enabled": True}}}
    with load_chart() as chart:
        objects = manifests(render(chart, values, api_versions=("monitoring.coreos.com/v1",)))
    master = Pod(f"{RELEASE}-master-7d9c8-x2x4q", pod_template(objects, "Deployment"), objects, tmp_path)
    workers = [Pod(f"{RELEASE}-worker-{i}", pod_template(objects, "StatefulSet"), objects, tmp_path)
               for i in range(2)]
    job = Pod(f"{RELEASE}-preload-abcde", pod_template(objects, "Job"), objects, tmp_path)
    for pod in (master, *workers, job):  # the kubelet projects the Secret's files into each pod
        for path, content in secret_files(pod.spec, pod.container, objects, tls_secret).items():
            Path(pod.volume_path(path)).parent.mkdir(parents=True, exist_ok=True)
            Path(pod.volume_path(path)).write_text(content)
    trusted = ssl.create_default_context(cafile=master.volume_path("/etc/p2pcache/tls/ca.crt"))
    pods = [master, *workers, job]
    try:
        master.start(rewrite(master.argv(), master, {"--listen": "127.0.0.1:0"}))
        master_url = master.ready_url()
        assert master_url.startswith("https://")
        for worker in workers:
            worker.start(rewrite(worker.argv(), worker, {"--listen": "127.0.0.1:0", "--master": master_url,
                                                         "--advertise": None}))
            url = worker.ready_url()
            assert url.startswith("https://")
            poll(lambda: http("GET", probe_url(worker, url, "readinessProbe"), context=trusted)[0] == 200, 30,
                 f"{worker.name} ready (joined the ring over https)")
        # Prometheus scrapes each pod as its ServiceMonitor says (a server with TLS hangs up on plain HTTP).
        ports = {"master": urlsplit(master_url).port, "worker": urlsplit(url).port}
        for monitor in find(objects, "ServiceMonitor"):
            (endpoint,) = monitor["spec"]["endpoints"]
            component = monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
            answer = scrape(endpoint, ports[component], tls_secret)
            assert answer.startswith(b"HTTP/1.1 200") and b"\np2pcache_" in answer, (component, answer[:200])

        job.start(rewrite(job.argv(), job, {"--master": master_url}))
        assert job.proc.wait(timeout=60) == 0, job.logs()
        summary = job.lines.get(timeout=10)
        assert " done: 1/1 objects" in summary and ", pinned" in summary, summary
        status = subprocess.run(
            [sys.executable, "-m", "p2pcache", "status", f"s3://{BUCKET}/llama/", "--json", "--master", master_url,
             "--tls-ca", master.volume_path("/etc/p2pcache/tls/ca.crt")],
            env={**os.environ, "P2PCACHE_CLUSTER_SECRET": master.env["P2PCACHE_CLUSTER_SECRET"]},
            capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert [(o["key"], o["cached"], o["pinned"]) for o in report["objects"]] == [(KEY, 1.0, 1.0)]
    finally:
        for pod in reversed(pods):
            pod.stop()
