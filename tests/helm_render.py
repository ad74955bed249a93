"""Render the Helm chart offline with Helm's own engine and read pods the way Kubernetes does."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from helm_python import _native

__all__ = [
    "CHART",
    "KUBE_VERSIONS",
    "NAMESPACE",
    "PRELOAD",
    "READER_KEYS",
    "RELEASE",
    "chart",
    "container",
    "container_env",
    "expand_vars",
    "find",
    "find_one",
    "flags",
    "load_chart",
    "manifests",
    "pod_template",
    "secret_files",
    "render",
    "render_on",
]

CHART = Path(__file__).resolve().parent.parent / "helm" / "p2pcache"
RELEASE = "p2pcache"
NAMESPACE = "ml"
KUBE_VERSIONS = ["1.29", "1.30", "1.31", "1.32", "1.33"]  # the schemas the rendered objects must pass
# Values the chart's test modules share.
READER_KEYS = [{"accessKeyId": "loader", "secretAccessKey": "s3cr3t/K7+=", "buckets": ["models", "datasets"]},
               {"accessKeyId": "admin", "secretAccessKey": "an0ther"}]
PRELOAD = {"preload": {"urls": ["s3://models/llama-3-8b/", "s3://models/tok.json"], "pin": True}}


@pytest.fixture(scope="module")
def chart():
    """The chart, loaded once per test module (imported by each: `from helm_render import chart`)."""
    with load_chart() as loaded:
        yield loaded


def load_chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render(
    chart: helm.Chart,
    values: dict[str, Any] | None = None,
    *,
    api_versions: tuple[str, ...] = (),
    kube_version: str | None = None,
    name: str = RELEASE,
) -> dict[str, str]:
    """Template path -> rendered text, as `helm template --api-versions ...` would give.

    `Chart.render` does not expose the engine's `api_versions`/`kube_version`/`strict`
    options, but the C ABI under it does (it rejects unknown keys, so a rename fails loudly).
    `strict` makes a reference to a missing value key an error instead of an empty string.
    """
    opts: dict[str, Any] = {"name": name, "namespace": NAMESPACE, "strict": True,
                            "is_install": True, "api_versions": list(api_versions)}
    if kube_version:
        opts["kube_version"] = kube_version
    payload = None if values is None else json.dumps(values)
    rendered = _native.call_string("helm_render", chart._raw(), payload, json.dumps(opts))
    files: dict[str, str] = json.loads(rendered)
    return files


def render_on(kube_url: str, chart: helm.Chart, values: dict[str, Any] | None = None, *,
              upgrade: bool = True) -> dict[str, str]:
    """As `helm upgrade` (or `helm install`) renders: `lookup` asks the API server at `kube_url`
    (tests/fakekube.py), where `render` finds nothing."""
    with helm.Config(kube_apiserver=kube_url, namespace=NAMESPACE) as config:
        return config.render(chart, values, name=RELEASE, namespace=NAMESPACE,
                             is_install=not upgrade, is_upgrade=upgrade)


class _StrictLoader(yaml.SafeLoader):
    """YAML loader that rejects duplicate keys, as the Kubernetes API's decoder does."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    keys = [loader.construct_object(key) for key, _ in node.value]
    duplicates = {key for key in keys if keys.count(key) > 1}
    if duplicates:
        raise yaml.constructor.ConstructorError(
            None, None, f"duplicate keys {sorted(duplicates)}", node.start_mark
        )
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def manifests(files: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object of a render, in template order."""
    objects = []
    for path, text in files.items():
        if path.endswith(".yaml"):
            objects += [doc for doc in yaml.load_all(text, Loader=_StrictLoader) if doc]
    return objects


def find(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def find_one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = find(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def pod_template(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return find_one(objects, kind)["spec"]["template"]


def container(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The one container of the pod template of the one object of `kind`."""
    containers = pod_template(objects, kind)["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def flags(cont: dict[str, Any]) -> dict[str, str]:
    """`--name=value` args as a dict; every rendered flag must use that one form."""
    args = cont["args"]
    assert all(re.fullmatch(r"--[a-z0-9-]+=.+", arg) for arg in args[1:]), args
    return dict(arg[2:].split("=", 1) for arg in args[1:])


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: `$$` escapes, an undefined reference stays as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR.sub(replace, text)


def _secrets(objects: list[dict[str, Any]], existing: dict[str, dict[str, str]] | None) -> dict[str, dict[str, str]]:
    """Secret name -> plain key/values: the render's Secrets, plus the ones the cluster is assumed to hold."""
    secrets = {s["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in s["data"].items()}
               for s in find(objects, "Secret")}
    secrets.update(existing or {})
    return secrets


def secret_files(
    pod_spec: dict[str, Any],
    container: dict[str, Any],
    objects: list[dict[str, Any]],
    existing_secrets: dict[str, dict[str, str]] | None = None,
) -> dict[str, str]:
    """Path inside the container -> content of each file the kubelet projects from a Secret volume."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    secrets = _secrets(objects, existing_secrets)
    files = {}
    for mount in container.get("volumeMounts", []):
        source = volumes.get(mount["name"], {}).get("secret")
        if source is None:
            continue
        assert "subPath" not in mount, "a subPath mount of a Secret is never updated"
        data = secrets[source["secretName"]]
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            files[f"{mount['mountPath']}/{item['path']}"] = data[item["key"]]
    return files


def container_env(
    container: dict[str, Any],
    objects: list[dict[str, Any]],
    pod_name: str,
    existing_secrets: dict[str, dict[str, str]] | None = None,
) -> dict[str, str]:
    """The container's environment as the kubelet builds it, resolving fieldRef and Secrets.

    Secrets come from the render, or from `existing_secrets` (name -> plain key/values)
    for the ones the cluster is assumed to hold already.
    """
    secrets = _secrets(objects, existing_secrets)
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand_vars(var["value"], env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            field = source["fieldRef"]["fieldPath"]
            assert field == "metadata.name", f"unsupported fieldRef {field}"
            env[var["name"]] = pod_name
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            raise AssertionError(f"unsupported env source {source}")
    return env
