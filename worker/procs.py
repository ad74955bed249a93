"""The coordinator's serving processes (`--serve-processes N`): started, watched, restarted, stopped.

The coordinator holds the worker's port bound (SO_REUSEPORT, never listening,
so it takes no connections) and listens on a unix socket in a private temp
dir, next to the identity generation it shares with them (worker/generation.py);
N serving processes (worker/serving.py) listen on the port. One that dies is
started again; the others keep answering meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import web

from p2pcache.httpserver import Server
from p2pcache.service import listening

from .config import WorkerConfig
from .generation import Generation
from .metrics import WorkerMetrics

__all__ = ["ServingProcesses", "reserve_port", "probe_port", "egress_shares"]

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

log = logging.getLogger("p2pcache.worker.procs")
READY_TIMEOUT = 30.0  # seconds for a serving process to import, bind and say so
RESTART_DELAYS = (0.1, 0.5, 2.0, 5.0)  # after the 1st, 2nd, ... death in a row within a minute
# A serving process reports at least once a second (worker/serving.py): one silent this long is
# stuck (stopped, or its event loop blocked), and every connection the kernel gives it hangs.
STUCK = 30.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def egress_shares(config: WorkerConfig) -> int:
    """How many processes share --egress-limit evenly: each serving process and the coordinator
    (it sends what it answers for them, and to peers), or the one process."""
    return config.serve_processes + 1 if config.serve_processes > 1 else 1


SOCKET = "coordinator.sock"
MAX_SOCKET_PATH = 107  # bytes of a unix socket's path (sun_path is 108, with its NUL)


def socket_dir() -> str:
    """A new private (0700: only this user reaches the socket) temp dir for the coordinator's
    socket: under $TMPDIR, or under /tmp when $TMPDIR is too long for a unix socket's path (the
    worker would not start)."""
    path = tempfile.mkdtemp(prefix="p2pcache-")
    if len(os.fsencode(f"{path}/{SOCKET}")) <= MAX_SOCKET_PATH:
        return path
    os.rmdir(path)
    return tempfile.mkdtemp(prefix="p2pcache-", dir="/tmp")


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` with SO_REUSEPORT: it keeps the port for the serving
    processes (port 0: picks one) and, never listening, receives no connections. `probe_port`
    first: SO_REUSEPORT alone would let this worker share a port another one uses."""
    probe_port(host, port)
    family, kind, proto, _, addr = _address(host, port)
    return _bind(socket.socket(family, kind, proto), addr, socket.SO_REUSEPORT)


def probe_port(host: str, port: int) -> None:
    """OSError (EADDRINUSE) if another worker has `host:port`, before this one binds it with SO_REUSEPORT.

    SO_REUSEPORT lets sockets of one user share a port, and the kernel would spread each
    worker's connections over both. So the port is first bound with SO_REUSEADDR alone, and
    let go: that fails while another worker listens on it, or holds it as `reserve_port` does,
    with SO_REUSEPORT alone (two sockets share a port under SO_REUSEADDR only if both set it).
    The old connections of a worker that restarts on the port (TIME_WAIT) are no conflict for
    either, as every worker's listeners set both (a one-process worker's too: its TIME_WAIT
    sockets would otherwise refuse a restart with serving processes for a minute). Port 0 (a
    free port, picked by the bind that follows) needs no probe.
    """
    if not port:
        return
    family, kind, proto, _, addr = _address(host, port)
    _bind(socket.socket(family, kind, proto), addr, socket.SO_REUSEADDR).close()


def _address(host: str, port: int):
    return socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]


def _bind(sock: socket.socket, addr, option: int) -> socket.socket:
    try:
        sock.setsockopt(socket.SOL_SOCKET, option, 1)
        if sock.family == socket.AF_INET6:  # as the serving processes' listeners (asyncio's create_server)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock


class ServingProcesses:
    def __init__(self, config: WorkerConfig, handler: Callable[[str], Handler], metrics: WorkerMetrics) -> None:
        """`handler(token)`: the unix socket's handler; its local routes need `token`."""
        self._config = config
        self._token = secrets.token_hex(16)
        self._handler = handler(self._token)
        self._metrics = metrics
        self.pids: list[int | None] = [None] * config.serve_processes
        self._procs: list[asyncio.subprocess.Process | None] = [None] * config.serve_processes
        self._heard = [0.0] * config.serve_processes  # loop time of each one's last report
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._dir = ""
        self._runner: web.ServerRunner | None = None
        self._port: socket.socket | None = None
        self._generation: Generation | None = None

    async def start(self) -> tuple[str, int]:
        """Listen on the unix socket, keep the port, start every serving process; (host, port)."""
        cfg = self._config
        self._dir = socket_dir()
        path = f"{self._dir}/{SOCKET}"
        counter = f"{self._dir}/generation"
        self._generation = Generation(counter, create=True)
        server = Server(self._handler, access_log=None, handler_cancellation=True,
                        head_timeout=cfg.head_timeout, idle_timeout=cfg.idle_timeout)
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=cfg.drain_timeout)
        await self._runner.setup()
        await web.UnixSite(self._runner, path).start()
        with listening(cfg.host, cfg.port):
            self._port = reserve_port(cfg.host, cfg.port)
        host, port = self._port.getsockname()[:2]
        settings = {
            "host": cfg.host, "port": port, "socket": path, "generation": counter, "cache_dir": str(cfg.cache_dir),
            "tls_cert": cfg.tls_cert, "tls_key": cfg.tls_key, "tls_ca": cfg.tls_ca,
            "peer_read_timeout": cfg.peer_timeout(), "allowed_buckets": sorted(cfg.allowed_buckets),
            "client_keys": [[k.key_id, k.secret, sorted(k.buckets)] for k in cfg.client_keys],
            "meta_ttl": cfg.meta_ttl, "egress_limit": cfg.egress_limit / egress_shares(cfg),
            "drain_timeout": cfg.drain_timeout, "parent": os.getpid(), "token": self._token,
            "max_reads": cfg.max_reads, "read_wait": cfg.read_wait, "send_timeout": cfg.send_timeout,
            "head_timeout": cfg.head_timeout, "idle_timeout": cfg.idle_timeout,
            "secret": cfg.cluster_secret.hex() if cfg.cluster_secret else "",  # stdin: not in argv or env
            "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        }
        first = [asyncio.get_running_loop().create_future() for _ in self.pids]
        self._tasks = [asyncio.create_task(self._supervise(i, settings, first[i])) for i in range(len(self.pids))]
        try:
            await asyncio.gather(*first)
        except BaseException:
            await self.stop()
            raise
        log.info("%d serving processes on port %d: pids %s", len(self.pids), port, self.pids)
        return host, port

    def identity_changed(self) -> None:
        """An object's identity changed in S3: every serving process stops using the ones it
        cached (it asks again), from its next read on. Call it before answering the request
        that learned of the change."""
        if self._generation is not None:
            self._generation.bump()

    async def _supervise(self, index: int, settings: dict, first: asyncio.Future) -> None:
        deaths = 0
        loop = asyncio.get_running_loop()
        while not self._stopping:
            started = loop.time()
            try:
                proc = await self._spawn(index, settings)
            except (OSError, RuntimeError) as exc:
                if not first.done():
                    first.set_exception(exc)
                    return
                if self._stopping:
                    return
                log.error("serving process %d could not start again: %s", index, exc)
            else:
                if not first.done():
                    first.set_result(None)
                self._metrics.serve_processes.inc()
                try:
                    code = await self._watch(index, proc)
                finally:
                    self._metrics.serve_processes.dec()
                    self.pids[index] = self._procs[index] = None
                if self._stopping:
                    return
                log.warning("serving process %d (pid %d) exited with %s: starting it again",
                            index, proc.pid, code)
                self._metrics.serve_restarts.inc()
            deaths = deaths + 1 if loop.time() - started < 60 else 1
            await asyncio.sleep(RESTART_DELAYS[min(deaths, len(RESTART_DELAYS)) - 1])

    def heard(self, index: int) -> None:
        """Serving process `index` reported: it is alive and its event loop turns."""
        if 0 <= index < len(self._heard):
            self._heard[index] = asyncio.get_running_loop().time()

    async def _watch(self, index: int, proc: asyncio.subprocess.Process) -> int:
        """Its exit code; a process that stops reporting for STUCK seconds is killed first."""
        loop = asyncio.get_running_loop()
        self._heard[index] = loop.time()
        exited = asyncio.ensure_future(proc.wait())  # one wait for the process's whole life
        try:
            while not (await asyncio.wait({exited}, timeout=STUCK / 4))[0]:
                silent = loop.time() - self._heard[index]
                if silent >= STUCK and not self._stopping:
                    log.error("serving process %d (pid %d) sent no report for %.0f s: stuck (stopped, or its "
                              "event loop blocked); killing it", index, proc.pid, silent)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            return exited.result()
        finally:
            exited.cancel()

    async def _spawn(self, index: int, settings: dict) -> asyncio.subprocess.Process:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker.serving", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env=env)
        self._procs[index] = proc
        proc.stdin.write(json.dumps(settings | {"index": index}).encode() + b"\n")  # secrets: not in argv
        proc.stdin.close()
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)
        except asyncio.TimeoutError:
            line = b""
        if not line.startswith(b"serving ready"):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            self._procs[index] = self.pids[index] = None
            raise RuntimeError(f"serving process {index} did not start (exit {proc.returncode}); see its log")
        self.pids[index] = proc.pid
        return proc

    async def stop(self) -> None:
        """Stop every serving process (SIGTERM: they finish their reads, for `--drain-timeout`),
        then the unix socket; one still running `--drain-timeout` + 5 s after the SIGTERM is killed."""
        self._stopping = True
        procs = [p for p in self._procs if p is not None and p.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + self._config.drain_timeout + 5  # one for them all
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner:
            await self._runner.cleanup()
        if self._port:
            self._port.close()
        if self._generation:
            self._generation.close()
            self._generation = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
