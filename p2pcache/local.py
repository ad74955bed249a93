"""`p2pcache local`: a master, N workers and (by default) an embedded S3 with demo data."""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import selectors
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, TextIO

from .auth import new_secret
from .bounds import bounded, bounded_size
from .config import add_flag, env_name, not_a_dir, size_arg
from .ring import MAX_CHUNK, MIN_CHUNK
from .service import die_with_parent

__all__ = ["add_arguments", "main", "seed_demo", "demo_bytes", "spawn", "wait_ready", "wait_joined",
           "stop_all", "write_secret", "say", "NotReady", "Stopped", "StopSignals", "DEMO_BUCKET", "DEMO_KEY",
           "SECRET_FILE"]

DEMO_BUCKET, DEMO_KEY = "demo", "models/demo-model.safetensors"
READY_TIMEOUT = 30.0
MAX_WORKERS = 100  # processes, each with its cache, on this machine
MAX_DEMO_SIZE = 5 << 30  # S3's largest single PUT; the demo object is built in memory
SECRET_FILE = "cluster-secret"  # in the data dir, when no secret is given
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class NotReady(RuntimeError):
    """A process of the cluster exited, or did not answer, before it was ready."""


class Stopped(BaseException):
    """A stop signal came while local was starting (a BaseException, as KeyboardInterrupt is: no
    `except Exception` on the way, boto3's retries among them, takes it for a failure and goes on)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_flag(p, "--workers", "number of workers", type=int, default=3)
    add_flag(p, "--s3-endpoint", "use this S3 endpoint instead of the embedded one", default="")
    add_flag(p, "--host", "address to bind everything to", default="127.0.0.1")
    add_flag(p, "--port", "master port; workers take the next ones (0: any free ports)",
             type=int, default=7070)
    add_flag(p, "--data-dir", "where the workers' caches and the cluster secret go (default: a temp dir)",
             default="")
    add_flag(p, "--chunk-size", "cluster-wide chunk size", type=size_arg, default="8MiB")
    add_flag(p, "--capacity", "cache capacity per worker", type=size_arg, default="2GiB")
    add_flag(p, "--demo-size", "size of the demo object", type=size_arg, default="64MiB")


def main(args: argparse.Namespace) -> int:
    """0 when stopped by a signal once ready; 128 + the signal when stopped while starting; 1 when a
    process did not start or exited; 2 for a bad flag."""
    try:
        bounded("--workers", args.workers, 1, MAX_WORKERS)
        bounded("--port", args.port, 0, 65535 - args.workers)  # the workers take the next ports
        bounded_size("--chunk-size", args.chunk_size, MIN_CHUNK, MAX_CHUNK)
        bounded_size("--capacity", args.capacity)
        bounded_size("--demo-size", args.demo_size, 0, MAX_DEMO_SIZE)
        if args.data_dir and (why := not_a_dir("--data-dir", Path(args.data_dir))):
            raise ValueError(why)
    except ValueError as exc:
        print(f"p2pcache local: {exc}", file=sys.stderr)
        return 2
    signals = StopSignals()
    with contextlib.ExitStack() as stack:  # undone in reverse: the processes, the secret, the dir, the S3
        procs: list[subprocess.Popen] = []
        try:
            banner = _up(stack, procs, args, signals)
        except NotReady as exc:  # the process's own line on stderr says why
            say(f"p2pcache local: {exc}", sys.stderr)
            return 1
        except OSError as exc:  # the data dir, or the secret file in it
            say(f"p2pcache local: {exc.strerror or exc}: {exc.filename}", sys.stderr)
            return 1
        except Stopped as exc:
            say("stopping the local cluster")
            return 128 + exc.signum
        say(banner)
        while not signals.received:
            if any(p.poll() is not None for p in procs):
                say("a cluster process exited; stopping the rest", sys.stderr)
                return 1
            time.sleep(0.2)
        say("stopping the local cluster")
    return 0


def _up(stack: contextlib.ExitStack, procs: list, args: argparse.Namespace, signals: StopSignals) -> str:
    """The S3, the data dir, the secret and the processes, each undone by `stack`; the banner."""
    env = dict(os.environ)
    endpoint = args.s3_endpoint
    if not endpoint:
        from .s3local import EmbeddedS3

        s3 = stack.enter_context(EmbeddedS3(args.host, 0, fast_ranges=True))
        endpoint = s3.url
        env |= {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo",
                "AWS_DEFAULT_REGION": "us-east-1"}
        with signals.waiting():
            seed_demo(endpoint, args.demo_size)
    data_dir = Path(args.data_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="p2pcache-")))
    if not (env.get(env_name("--cluster-secret")) or env.get(env_name("--cluster-secret-file"))):
        # A fresh secret in a file only this user can read: never on a command line `ps` shows, nor
        # in the environment; the banner names the file for status, preload and unpin.
        secret_file = (data_dir / SECRET_FILE).absolute()
        stack.callback(secret_file.unlink, missing_ok=True)
        write_secret(secret_file, new_secret())
        env[env_name("--cluster-secret-file")] = str(secret_file)
    stack.callback(stop_all, procs)
    master_url, workers = _start(procs, env, args, endpoint, data_dir, signals)
    return _banner(endpoint, master_url, workers, demo=not args.s3_endpoint, env=env)


def _start(procs: list, env: dict, args: argparse.Namespace, endpoint: str, data_dir: Path,
           signals: StopSignals) -> tuple[str, list[str]]:
    """The master and the workers, each ready in turn, at local's --log-level: (master URL, worker URLs)."""
    port, level = args.port, getattr(args, "log_level", "INFO")
    master = spawn(procs, env, "--log-level", level, "master", "--listen", f"{args.host}:{port}",
                   "--chunk-size", str(args.chunk_size), "--startup-grace", "0")
    with signals.waiting():
        master_url = wait_ready(master, name="master")
    workers = []
    for i in range(args.workers):
        wport = port + 1 + i if port else 0
        worker = spawn(procs, env, "--log-level", level, "worker", "--master", master_url,
                       "--listen", f"{args.host}:{wport}", "--cache-dir", str(data_dir / f"worker-{i}"),
                       "--id", f"worker-{i}", "--capacity", str(args.capacity), "--s3-endpoint", endpoint,
                       "--min-free", "0", "--heartbeat-interval", "1")
        with signals.waiting():
            workers.append(wait_ready(worker, name=f"worker worker-{i}"))
    with signals.waiting():
        wait_joined(workers)
    return master_url, workers


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP (its terminal closed) stop local. The first one counts; later ones
    are ignored, so a second Ctrl-C cannot cut the cleanup short. A SIGHUP ignored from the start
    (`nohup`) stays ignored.

    Inside `waiting()` the signal raises Stopped at once. Elsewhere (between starting a process and
    its place in the list stop_all stops; while the cluster serves or stops) it is only recorded in
    `received`, and the next `waiting()` raises it.
    """

    def __init__(self) -> None:
        self.received = 0
        self._raise = False
        for sig in STOP_SIGNALS:
            if not (sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN):
                signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame) -> None:
        if self.received:
            return
        self.received = signum
        if self._raise:
            self._raise = False
            raise Stopped(signum)

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        self._raise = True  # before the check: a signal between the two still raises
        try:
            if self.received:
                raise Stopped(self.received)
            yield
        finally:
            self._raise = False


def write_secret(path: Path, secret: str) -> None:
    """`secret` in a new file at `path` only its owner can read (0600), in place of one an earlier run
    with the same --data-dir left: never written through a file or a link someone else put there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(secret + "\n")


def say(text: str, stream: TextIO | None = None) -> None:
    """`text` on stdout (or `stream`). A reader gone (`| head`, a `| tee` ended by the same Ctrl-C, a
    closed terminal: EPIPE or EIO) must not stop local nor its cleanup: what follows goes to /dev/null."""
    stream = stream or sys.stdout
    if stream is None:  # started with stdout closed (service.std_fds_open)
        return
    try:
        print(text, file=stream, flush=True)
    except OSError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())  # what print left in the buffer is flushed there at exit
        os.close(devnull)


def seed_demo(endpoint: str, size: int) -> None:
    """A demo bucket with a safetensors-shaped object of `size` bytes."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="demo", aws_secret_access_key="demo")
    s3.create_bucket(Bucket=DEMO_BUCKET)
    header = b'{"__metadata__":{"format":"demo"}}'
    body = len(header).to_bytes(8, "little") + header
    body += demo_bytes(max(0, size - len(body)))
    s3.put_object(Bucket=DEMO_BUCKET, Key=DEMO_KEY, Body=body[:size])


def demo_bytes(size: int, seed: int = 0) -> bytes:
    """`size` deterministic pseudo-random bytes (randbytes alone overflows past 256 MiB)."""
    rnd = random.Random(seed)
    return b"".join(rnd.randbytes(min(16 << 20, size - pos)) for pos in range(0, size, 16 << 20))


def spawn(procs: list, env: dict, *args: str, stderr: int | None = None) -> subprocess.Popen:
    """Start `p2pcache ARGS`; it gets SIGTERM if this process dies, even by SIGKILL.

    Its stderr is ours unless `stderr` says otherwise (a PIPE someone must keep draining)."""
    proc = subprocess.Popen([sys.executable, "-m", "p2pcache", *args], env=env,
                            stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
                            preexec_fn=die_with_parent)
    procs.append(proc)
    return proc


def wait_ready(proc: subprocess.Popen, timeout: float = READY_TIMEOUT, name: str = "") -> str:
    """The URL from the process's `... ready url=URL` line (its only line on stdout).

    NotReady, naming the process (`name`, or its subcommand) and its exit code, if it
    exits first or is silent for `timeout` seconds.
    """
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        line = proc.stdout.readline() if sel.select(timeout=timeout) else None
    if line and " ready url=" in line:
        return line.split(" ready url=")[1].split()[0]
    if line == "":  # its stdout closed: it exited, or is exiting
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    name = name or next((arg for arg in proc.args if arg in ("master", "worker")), "the process")
    why = f"exit code {proc.returncode}" if proc.returncode is not None else f"still running after {timeout:g} s"
    raise NotReady(f"{name} did not become ready ({why})")


def wait_joined(urls: list[str], timeout: float = READY_TIMEOUT) -> None:
    """Until every worker answers /_p2p/ready: it is in the ring and can place chunks."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    for url in urls:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_p2p/ready", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise NotReady(f"worker {url} did not join the ring") from None
                time.sleep(0.1)


def stop_all(procs: list[subprocess.Popen]) -> None:
    """Workers first, while the master is up to hear them leave; then the master."""
    for batch in (procs[1:], procs[:1]):
        for proc in batch:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in batch:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _banner(endpoint: str, master_url: str, workers: list[str], demo: bool, env: dict) -> str:
    """What runs where, how status, preload and unpin reach it, and a curl of the demo object
    (seeded in the embedded S3 only)."""
    lines = ["p2pcache local cluster ready", f"  s3:      {endpoint}", f"  master:  {master_url}"]
    lines += [f"  worker:  {url}" for url in workers]
    lines += ["", "For p2pcache status, preload and unpin (in another shell):", f"  {_reach(master_url, env)}"]
    if demo:
        lines += ["", "Read a byte range of the demo object through the cache:",
                  f"  curl -r 0-1048575 -o /tmp/part {workers[0]}/{DEMO_BUCKET}/{DEMO_KEY}"]
    else:
        lines += ["", "Read a byte range of an object in that S3 through the cache (no demo object there):",
                  f"  curl -r 0-1048575 -o /tmp/part {workers[0]}/BUCKET/KEY"]
    lines += ["", "Press Ctrl-C to stop."]
    return "\n".join(lines)


def _reach(master_url: str, env: dict) -> str:
    """The `export` of the master's URL and of the cluster's secret file: never a secret itself."""
    line = f"export {env_name('--master')}={master_url}"
    secret_file = env.get(env_name("--cluster-secret-file"))
    if secret_file:
        return f"{line} {env_name('--cluster-secret-file')}={shlex.quote(os.path.abspath(secret_file))}"
    if env.get(env_name("--cluster-secret")):
        return f"{line}   # and the {env_name('--cluster-secret')} it was started with"
    return line
