"""Command-line flags that can also come from `P2PCACHE_*` environment variables.

A flag on the command line beats the environment, also across two flags that exclude each
other: `--cluster-secret-file F` wins over `P2PCACHE_CLUSTER_SECRET`; only both on the
command line, or both in the environment, conflict.
"""

from __future__ import annotations

import argparse
import math
import os
import stat
from pathlib import Path
from typing import Callable

from .members import service_url
from .objects import check_bucket
from .sizes import parse_size

__all__ = ["add_flag", "add_security_flags", "add_secret_flags", "add_reader_key_flags", "reader_key",
           "parse_listen", "size_arg", "number_arg", "env_name", "split_s3_url", "s3_url", "master_url",
           "not_a_dir"]

_GIVEN = "_flags_given"  # the namespace's set of flags given on the command line


def env_name(flag: str) -> str:
    """`--cache-dir` -> `P2PCACHE_CACHE_DIR`."""
    return "P2PCACHE_" + flag.lstrip("-").upper().replace("-", "_")


def add_flag(parser: argparse.ArgumentParser, flag: str, help: str, secret: bool = False, excludes: str = "",
             **kwargs) -> None:
    """Add `flag`; its environment variable, when set, replaces the default (never shown if `secret`).

    With `excludes` (another flag), this flag on the command line drops that one's value from the
    environment, unless it is on the command line too.
    """
    env = env_name(flag)
    if env in os.environ:
        kwargs["default"] = os.environ[env]
        kwargs["required"] = False
        if kwargs.get("choices") is not None:  # argparse checks a command line's value against them, not a default
            kwargs["type"] = _one_of(kwargs.get("type", str), kwargs["choices"], env)
    if excludes:
        kwargs |= {"action": _Excluding, "excludes": excludes.lstrip("-").replace("-", "_")}
    default = kwargs.get("default")
    shown = f" (default {default})" if default not in (None, "", False) and not secret else ""
    parser.add_argument(flag, help=f"{help}{shown} [env {env}]", **kwargs)


def _one_of(kind: Callable[[str], object], choices, env: str) -> Callable[[str], object]:
    """`kind`, refusing a value outside `choices` as argparse refuses one on the command line."""
    def convert(text: str) -> object:
        value = kind(text)
        if value not in choices:
            raise argparse.ArgumentTypeError(f"invalid choice: {value!r} from {env} "
                                             f"(choose from {', '.join(map(repr, choices))})")
        return value
    return convert


class _Excluding(argparse.Action):
    """Stores a flag given on the command line, and clears the flag it excludes unless that one was given too."""

    def __init__(self, option_strings, dest, excludes: str, **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.excludes = excludes

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        given = vars(namespace).setdefault(_GIVEN, set())
        given.add(self.dest)
        if self.excludes not in given:
            setattr(namespace, self.excludes, None)


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


def number_arg(kind: type[int] | type[float], low: float) -> Callable[[str], float]:
    """argparse type of a finite number of at least `low`: `--files 0` is refused, not clamped."""
    want = f"a {'whole ' if kind is int else ''}number of at least {low:g}"

    def number(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"must be {want}, not {text!r}")
        return value

    return number


def split_s3_url(text: str, form: str = "s3://bucket/prefix") -> tuple[str, str]:
    """`s3://bucket[/rest]` -> (bucket, rest); a ValueError naming `form` otherwise, or if `text`
    is not UTF-8 (an argv byte that is not comes as a lone surrogate, which no request can carry)."""
    bucket, _, rest = text.removeprefix("s3://").partition("/")
    if not text.startswith("s3://") or not bucket:
        raise ValueError(f"{text!r} is not an {form} URL")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{text!r} is not UTF-8 text: S3 bucket names and keys are") from None
    return bucket, rest


def s3_url(text: str) -> str:
    """argparse type of an `s3://bucket[/prefix]` argument: its bucket's name too (`check_bucket`)."""
    try:
        check_bucket(split_s3_url(text)[0])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def master_url(text: str) -> str:
    """argparse type of `--master`: `http(s)://host[:port]`, the rule a worker's `--master` and
    every worker's URL follow (`members.check_url`); a trailing `/` is dropped."""
    try:
        return service_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_secret_flags(p: argparse.ArgumentParser) -> None:
    """`--cluster-secret` and `--cluster-secret-file`: either, or their env variables; the command line wins."""
    add_flag(p, "--cluster-secret", "secret that signs every internal request (prefer the env "
             "variable or --cluster-secret-file: a command line is visible to other users)",
             secret=True, default="", excludes="--cluster-secret-file")
    add_flag(p, "--cluster-secret-file", "file holding the cluster secret", default="",
             excludes="--cluster-secret")


def add_security_flags(p: argparse.ArgumentParser) -> None:
    """The cluster secret and TLS flags that the master and the workers share."""
    add_secret_flags(p)
    add_flag(p, "--tls-cert", "PEM certificate chain: serve HTTPS", default="")
    add_flag(p, "--tls-key", "PEM private key of --tls-cert", default="")


def add_reader_key_flags(p: argparse.ArgumentParser) -> None:
    """The reader key a client command signs its reads with, for workers with `--client-keys`."""
    add_flag(p, "--access-key", "reader key id: sign requests (SigV4) for workers with --client-keys", default="")
    add_flag(p, "--secret-key", "the reader key's secret (prefer the env variable: a command line is "
             "visible to other users)", secret=True, default="")
    add_flag(p, "--region", "the region in the signature's scope", default="us-east-1")
    add_flag(p, "--credentials", "'env': the reader key from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
             "(and AWS_REGION)", choices=("none", "env"), default="none")


def reader_key(args: argparse.Namespace) -> dict[str, str | None]:
    """The `Client` arguments of the flags `add_reader_key_flags` added; ValueError if half a key."""
    if bool(args.access_key) != bool(args.secret_key):
        raise ValueError("a reader key needs both --access-key and --secret-key (or P2PCACHE_ACCESS_KEY "
                         "and P2PCACHE_SECRET_KEY)")
    return {"access_key": args.access_key or None, "secret_key": args.secret_key or None,
            "region": args.region or None, "credentials": args.credentials}


def not_a_dir(flag: str, path: Path) -> str | None:
    """Why the directory `path` given as `flag` can never be one (it, or a path above it, is a file
    or another non-directory), or None: a directory, or missing from some point on (to be made), or
    not to be looked at (whoever uses it says so if it matters)."""
    for part in (*reversed(path.parents), path):
        try:
            if not stat.S_ISDIR(os.stat(part).st_mode):
                return f"{flag} {path}{'' if part == path else f': {part}'} is not a directory"
        except OSError:
            return None
    return None
