"""The security flags on the command line: bad secrets and TLS pairs stop the service with one line; help hides the secret."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import cli_env


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "p2pcache", *args], capture_output=True, text=True, timeout=60,
                          env=cli_env(**(env or {})))


@pytest.mark.parametrize(("args", "env", "why"), [
    (["--cluster-secret", "short"], {}, "at least 16 bytes"),
    ([], {"P2PCACHE_CLUSTER_SECRET": "short"}, "at least 16 bytes"),
    (["--cluster-secret", "0123456789abcdef", "--cluster-secret-file", "/etc/hostname"], {}, "not both"),
    (["--cluster-secret-file", "/nonexistent/secret"], {}, "cannot read the cluster secret file"),
    # A flag on the command line beats the environment: the file's own error shows, not "not both".
    (["--cluster-secret-file", "/nonexistent/secret"], {"P2PCACHE_CLUSTER_SECRET": "0123456789abcdef"},
     "cannot read the cluster secret file"),
    (["--cluster-secret", "short"], {"P2PCACHE_CLUSTER_SECRET_FILE": "/etc/hostname"}, "at least 16 bytes"),
    ([], {"P2PCACHE_CLUSTER_SECRET": "0123456789abcdef", "P2PCACHE_CLUSTER_SECRET_FILE": "/etc/hostname"},
     "not both"),
    (["--tls-cert", "/tmp/cert.pem"], {}, "--tls-cert and --tls-key go together"),
])
@pytest.mark.parametrize("service", ["master", "worker"])
def test_bad_security_flags_stop_the_service_with_one_line(service, args, env, why, tmp_path):
    extra = ["--master", "http://127.0.0.1:9", "--cache-dir", str(tmp_path)] if service == "worker" else []
    result = run(service, "--listen", "127.0.0.1:0", *extra, *args, env=env)
    assert result.returncode == 2
    assert why in result.stderr and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_help_never_shows_the_secret_from_the_environment():
    secret = "do-not-print-this-secret-0123456789"
    for service in ("master", "worker"):
        result = run(service, "--help", env={"P2PCACHE_CLUSTER_SECRET": secret})
        assert result.returncode == 0 and "--cluster-secret" in result.stdout and secret not in result.stdout


def test_unusable_certificate_files_stop_the_service_with_one_line(tmp_path):
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    for service, extra in (("master", []), ("worker", ["--master", "http://127.0.0.1:9", "--cache-dir", str(tmp_path)])):
        for key, why in (("key.pem", "--tls-cert/--tls-key: not a PEM certificate chain and its key"),
                         ("missing.pem", f"--tls-key: cannot read {tmp_path / 'missing.pem'}")):
            result = run(service, "--listen", "127.0.0.1:0", *extra, "--tls-cert", str(tmp_path / "cert.pem"),
                         "--tls-key", str(tmp_path / key))
            assert result.returncode == 2 and result.stderr.startswith(f"p2pcache {service}: {why}")
            assert result.stderr.count("\n") == 1
    result = run("worker", "--listen", "127.0.0.1:0", "--master", "http://127.0.0.1:9", "--cache-dir", str(tmp_path),
                 "--tls-ca", str(tmp_path / "cert.pem"))
    assert result.returncode == 2 and "--tls-ca" in result.stderr and result.stderr.count("\n") == 1
