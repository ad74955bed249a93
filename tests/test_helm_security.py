"""The Helm chart's cluster secret and TLS: a random secret kept in a Secret, or the user's;
https for the services, the probes and the peers."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import helm_python as helm
import pytest

from p2pcache.cli import build_parser

from fakekube import FakeKube
from helm_render import NAMESPACE, chart, container, container_env, find, flags, manifests, pod_template, render, render_on

TLS = {"tls": {"enabled": True, "existingSecret": "p2pcache-tls"}}
# The user's own Secrets, as `container_env` resolves references to them.
USER_SECRET = {"my-cluster": {"token": "a-cluster-secret-of-the-users-own"}}
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "existing-cluster-secret": {"clusterSecret": {"existingSecret": "my-cluster", "key": "token"}},
    "no-cluster-secret": {"clusterSecret": {"enabled": False}},
    "tls": TLS,
}


@pytest.fixture(scope="module")
def rendered(chart):
    return {name: manifests(render(chart, values)) for name, values in VARIANTS.items()}


def test_master_and_workers_share_one_random_cluster_secret_from_a_secret(rendered, chart):
    objects = rendered["defaults"]
    envs = {kind: container_env(container(objects, kind), objects, "p-0") for kind in ("Deployment", "StatefulSet")}
    secret = envs["Deployment"]["P2PCACHE_CLUSTER_SECRET"]
    assert secret == envs["StatefulSet"]["P2PCACHE_CLUSTER_SECRET"] and len(secret) >= 32
    for kind in ("Deployment", "StatefulSet"):  # from the Secret, never on the command line
        assert not any("secret" in arg for arg in container(objects, kind)["args"])
        (var,) = [v for v in container(objects, kind)["env"] if v["name"] == "P2PCACHE_CLUSTER_SECRET"]
        assert var["valueFrom"]["secretKeyRef"] == {"name": "p2pcache-cluster", "key": "cluster-secret"}
    again = manifests(render(chart, {}))  # offline there is nothing to look up: a new random value
    assert container_env(container(again, "Deployment"), again, "p-0")["P2PCACHE_CLUSTER_SECRET"] != secret
    # On a live cluster, `helm upgrade` keeps the value: test_an_upgrade_rolls_the_pods_only_for_a_new_cluster_secret


def test_an_existing_cluster_secret_or_none(rendered):
    objects = rendered["existing-cluster-secret"]
    for kind in ("Deployment", "StatefulSet"):
        env = container_env(container(objects, kind), objects, "p-0", USER_SECRET)
        assert env["P2PCACHE_CLUSTER_SECRET"] == "a-cluster-secret-of-the-users-own"
        assert "P2PCACHE_CLUSTER_SECRET" not in container_env(
            container(rendered["no-cluster-secret"], kind), rendered["no-cluster-secret"], "p-0")


def checksums(objects: list[dict[str, Any]]) -> list[str | None]:
    """The master's and the workers' `checksum/cluster-secret` pod annotations."""
    return [pod_template(objects, kind)["metadata"].get("annotations", {}).get("checksum/cluster-secret")
            for kind in ("Deployment", "StatefulSet")]


def cluster_secret_data(objects: list[dict[str, Any]]) -> str:
    """The value of the chart's own cluster Secret, as its data holds it (base64)."""
    (secret,) = [s for s in find(objects, "Secret") if s["metadata"]["name"] == "p2pcache-cluster"]
    return secret["data"]["cluster-secret"]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_a_new_cluster_secret_restarts_the_master_and_the_workers_together(rendered, chart):
    """Pods read the secret when they start: one left on the old value after the Secret changed
    would refuse, or be refused by, every pod started after it. So the pod templates carry a
    checksum of the value, and a `helm upgrade` with a new value rolls them all."""
    first = checksums(rendered["defaults"])
    assert all(c and len(c) == 64 for c in first)
    # Offline every render is a new random value (on a live cluster `lookup` keeps the old one).
    again = checksums(manifests(render(chart, {})))
    assert not set(again) & set(first)
    assert checksums(rendered["no-cluster-secret"]) == [None, None]
    # The user's Secret is looked up when there is a cluster to look in; offline there is none.
    assert checksums(rendered["existing-cluster-secret"]) == [None, None]
    # The user's own annotations stay.
    mine = manifests(render(chart, {"master": {"podAnnotations": {"team": "ml"}}}))
    assert pod_template(mine, "Deployment")["metadata"]["annotations"]["team"] == "ml"


def test_the_checksum_is_of_the_value_in_the_rendered_secret(rendered):
    """One random value per render, in the Secret and in both annotations alike (each template
    that included the Secret to checksum it used to draw a value of its own)."""
    objects = rendered["defaults"]
    assert checksums(objects) == [sha256(cluster_secret_data(objects))] * 2


def test_an_upgrade_rolls_the_pods_only_for_a_new_cluster_secret(chart):
    """`helm install`, then `helm upgrade` with `lookup` finding what the install made: the same
    value and checksum, so nothing restarts; another value in the Secret (or none: the chart makes
    one) changes the checksum, so the master and the workers restart on it together."""
    name = (NAMESPACE, "p2pcache-cluster")
    with FakeKube() as kube:
        installed = manifests(render_on(kube.url, chart, {}, upgrade=False))  # nothing to look up yet
        data = cluster_secret_data(installed)
        first = checksums(installed)
        assert first == [sha256(data)] * 2
        kube.secrets[name] = {"cluster-secret": data}
        upgraded = manifests(render_on(kube.url, chart, {}))
        assert cluster_secret_data(upgraded) == data and checksums(upgraded) == first
        assert f"/api/v1/namespaces/{NAMESPACE}/secrets/p2pcache-cluster" in kube.paths  # it did look
        kube.secrets[name] = {"cluster-secret": b64("rotated-by-hand")}
        rotated = manifests(render_on(kube.url, chart, {}))
        assert cluster_secret_data(rotated) == b64("rotated-by-hand")
        assert checksums(rotated) == [sha256(b64("rotated-by-hand"))] * 2 != first
        del kube.secrets[name]  # deleted to rotate: a new random value
        remade = manifests(render_on(kube.url, chart, {}))
        assert checksums(remade) == [sha256(cluster_secret_data(remade))] * 2
        assert cluster_secret_data(remade) != data and checksums(remade) != first
        # The user's own Secret: its value, looked up.
        values = VARIANTS["existing-cluster-secret"]
        kube.secrets[NAMESPACE, "my-cluster"] = {"token": b64("a-cluster-secret-of-the-users-own")}
        mine = checksums(manifests(render_on(kube.url, chart, values)))
        assert mine == [sha256(b64("a-cluster-secret-of-the-users-own"))] * 2
        assert checksums(manifests(render_on(kube.url, chart, values))) == mine
        kube.secrets[NAMESPACE, "my-cluster"] = {"token": b64("rotated")}
        assert checksums(manifests(render_on(kube.url, chart, values))) == [sha256(b64("rotated"))] * 2


def test_tls_serves_https_everywhere(rendered, chart):
    objects = rendered["tls"]
    master, worker = container(objects, "Deployment"), container(objects, "StatefulSet")
    for cont, kind in ((master, "Deployment"), (worker, "StatefulSet")):
        (mount,) = [m for m in cont["volumeMounts"] if m["name"] == "tls"]
        assert mount["readOnly"] and flags(cont)["tls-cert"] == f"{mount['mountPath']}/tls.crt"
        assert flags(cont)["tls-key"] == f"{mount['mountPath']}/tls.key"
        (volume,) = [v for v in pod_template(objects, kind)["spec"]["volumes"] if v["name"] == "tls"]
        assert volume["secret"]["secretName"] == "p2pcache-tls"
        for probe in ("readinessProbe", "livenessProbe"):
            assert cont[probe]["httpGet"]["scheme"] == "HTTPS"
    # A private CA: the workers verify the master and each other with it, the master the workers.
    assert flags(worker)["tls-ca"] == flags(master)["tls-ca"] == "/etc/p2pcache/tls/ca.crt"
    assert build_parser().parse_args(master["args"]).tls_ca == flags(master)["tls-ca"]  # the master's own CLI
    without_ca = manifests(render(chart, {"tls": {**TLS["tls"], "caKey": ""}}))  # the system's CAs
    assert all("tls-ca" not in flags(container(without_ca, kind)) for kind in ("Deployment", "StatefulSet"))
    assert flags(worker)["master"].startswith("https://") and flags(worker)["advertise"].startswith("https://")
    plain = rendered["defaults"]
    assert flags(container(plain, "StatefulSet"))["master"].startswith("http://")
    assert container(plain, "StatefulSet")["readinessProbe"]["httpGet"]["scheme"] == "HTTP"


def test_tls_needs_a_certificate_secret(chart):
    with pytest.raises(helm.HelmError, match="tls.existingSecret is required"):
        render(chart, {"tls": {"enabled": True}})


def test_notes_say_whether_the_cluster_is_closed(chart):
    assert "signed with the cluster" in render(chart)["p2pcache/templates/NOTES.txt"]
    assert "the cluster is open" in render(chart, {"clusterSecret": {"enabled": False}})["p2pcache/templates/NOTES.txt"]
    notes = render(chart, {"tls": {"enabled": True, "existingSecret": "x"}})["p2pcache/templates/NOTES.txt"]
    assert "https://p2pcache.ml.svc.cluster.local" in notes
