"""Command-line flags that can also come from `P2PCACHE_*` environment variables."""

from __future__ import annotations

import argparse
import os

from .sizes import parse_size

__all__ = ["add_flag", "add_security_flags", "parse_listen", "size_arg", "env_name"]


def env_name(flag: str) -> str:
    """`--cache-dir` -> `P2PCACHE_CACHE_DIR`."""
    return "P2PCACHE_" + flag.lstrip("-").upper().replace("-", "_")


def add_flag(parser: argparse.ArgumentParser, flag: str, help: str, secret: bool = False, **kwargs) -> None:
    """Add `flag`; its environment variable, when set, replaces the default (never shown if `secret`)."""
    env = env_name(flag)
    if env in os.environ:
        kwargs["default"] = os.environ[env]
        kwargs["required"] = False
    default = kwargs.get("default")
    shown = f" (default {default})" if default not in (None, "", False) and not secret else ""
    parser.add_argument(flag, help=f"{help}{shown} [env {env}]", **kwargs)


def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`) -> (host, port); port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid listen address {text!r}: use HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def add_security_flags(p: argparse.ArgumentParser) -> None:
    """The cluster secret and TLS flags that the master and the workers share."""
    add_flag(p, "--cluster-secret", "secret that signs every internal request (prefer the env "
             "variable or --cluster-secret-file: a command line is visible to other users)",
             secret=True, default="")
    add_flag(p, "--cluster-secret-file", "file holding the cluster secret", default="")
    add_flag(p, "--tls-cert", "PEM certificate chain: serve HTTPS", default="")
    add_flag(p, "--tls-key", "PEM private key of --tls-cert", default="")
