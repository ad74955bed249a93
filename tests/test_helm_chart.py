"""The Helm chart: lint, render variants, Kubernetes schemas, cross-references, values schema."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import helm_python as helm
import kubernetes_validate
import pytest

from master.config import MasterConfig
from p2pcache.cli import build_parser
from p2pcache.sizes import parse_size
from worker.config import WorkerConfig, add_arguments
from worker.readers import ClientKey, parse_client_keys

from helm_render import (
    CHART,
    NAMESPACE,
    container,
    container_env,
    expand_vars,
    find,
    find_one,
    flags,
    load_chart,
    manifests,
    pod_template,
    render,
    secret_files,
)

MONITORING = ("monitoring.coreos.com/v1",)
CREDENTIALS = {"s3": {"accessKeyId": "AKIDEXAMPLE", "secretAccessKey": "secret"}}
READER_KEYS = [{"accessKeyId": "loader", "secretAccessKey": "s3cr3t/K7+=", "buckets": ["models", "datasets"]},
               {"accessKeyId": "admin", "secretAccessKey": "an0ther"}]
KUBE_VERSIONS = ["1.29", "1.30", "1.31", "1.32", "1.33"]
CONTRACT_METRICS = {
    "p2pcache_requests_total", "p2pcache_bytes_served_total", "p2pcache_cache_hits_total",
    "p2pcache_cache_misses_total", "p2pcache_origin_bytes_total", "p2pcache_peer_bytes_total",
    "p2pcache_fills_in_flight", "p2pcache_store_bytes", "p2pcache_store_capacity_bytes",
    "p2pcache_ring_epoch", "p2pcache_ring_workers",
}

# name -> (values, API versions the cluster offers)
VARIANTS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "defaults": ({}, ()),
    "emptyDir-credentials": ({**CREDENTIALS, "cache": {"mode": "emptyDir", "emptyDir": {"medium": "Memory"}}}, ()),
    "hostPath": ({"cache": {"mode": "hostPath"}, "worker": {"podAntiAffinity": "required"}}, ()),
    "volumeClaimTemplate": ({"cache": {"mode": "volumeClaimTemplate", "size": "500G",
                                       "volumeClaimTemplate": {"storageClassName": "local-nvme"}}}, ()),
    "hpa": ({"autoscaling": {"enabled": True}}, ()),
    "servicemonitor-without-api": ({"metrics": {"serviceMonitor": {"enabled": True}}}, ()),
    "servicemonitor": ({"metrics": {"serviceMonitor": {"enabled": True}}}, MONITORING),
    "servicemonitor-off-with-api": ({}, MONITORING),
    "existing-secret-s3-endpoint": ({"s3": {"existingSecret": "aws-keys", "endpoint": "http://minio.storage:9000",
                                           "allowedBuckets": ["models", "datasets"]}}, ()),
    "everything-off": ({"podDisruptionBudget": {"enabled": False}, "serviceAccount": {"create": False},
                        "metrics": {"dashboard": {"enabled": False}}, "worker": {"podAntiAffinity": "none"},
                        "clusterSecret": {"enabled": False}}, ()),
    "existing-cluster-secret": ({"clusterSecret": {"existingSecret": "my-cluster", "key": "token"}}, ()),
    "client-keys-inline": ({"clientKeys": {"keys": READER_KEYS}}, ()),
    "client-keys-existing": ({"clientKeys": {"existingSecret": "reader-keys", "existingSecretKey": "keys.txt"}}, ()),
    "tls": ({"tls": {"enabled": True, "existingSecret": "p2pcache-tls"}}, ()),
}


@pytest.fixture(scope="module")
def chart():
    with load_chart() as loaded:
        yield loaded


@pytest.fixture(scope="module")
def rendered(chart):
    return {name: manifests(render(chart, values, api_versions=apis))
            for name, (values, apis) in VARIANTS.items()}


def port_of(cont: dict[str, Any], port: int | str) -> int:
    """Resolve a probe's or Service's target port (name or number) against a container."""
    for declared in cont["ports"]:
        if port in (declared["name"], declared["containerPort"]):
            return declared["containerPort"]
    raise AssertionError(f"port {port!r} is not declared by container {cont['name']}")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint_strict_is_clean(variant):
    values, _ = VARIANTS[variant]
    for kube_version in ("v1.29.0", "v1.33.0"):
        report = helm.lint(CHART, values, strict=True, kube_version=kube_version)
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_objects_validate_against_kubernetes_schemas(rendered, variant, kube_version):
    objects = rendered[variant]
    checked = 0
    for obj in objects:
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            continue  # a CRD: not in the Kubernetes schemas; checked in test_servicemonitor
        kubernetes_validate.validate(obj, kube_version, strict=True)
        checked += 1
    assert checked >= 5  # master, its Service, StatefulSet, two worker Services


def test_variants_render_what_they_select(rendered):
    kinds = {name: sorted(obj["kind"] for obj in objs) for name, objs in rendered.items()}
    assert "HorizontalPodAutoscaler" not in kinds["defaults"]
    secrets = {name: sorted(o["metadata"]["name"] for o in find(objs, "Secret")) for name, objs in rendered.items()}
    assert secrets["defaults"] == ["p2pcache-cluster"]  # the cluster secret; no S3 keys unless given
    assert kinds["hpa"].count("HorizontalPodAutoscaler") == 1
    assert kinds["servicemonitor"].count("ServiceMonitor") == 2
    for name in ("defaults", "servicemonitor-without-api", "servicemonitor-off-with-api"):
        assert "ServiceMonitor" not in kinds[name]
    assert secrets["emptyDir-credentials"] == ["p2pcache-cluster", "p2pcache-s3"]
    assert secrets["everything-off"] == secrets["existing-cluster-secret"] == []
    assert secrets["client-keys-inline"] == ["p2pcache-client-keys", "p2pcache-cluster"]
    assert secrets["client-keys-existing"] == ["p2pcache-cluster"]
    for kind in ("PodDisruptionBudget", "ServiceAccount", "ConfigMap"):
        assert kind not in kinds["everything-off"]
    assert "replicas" in find_one(rendered["defaults"], "StatefulSet")["spec"]
    assert "replicas" not in find_one(rendered["hpa"], "StatefulSet")["spec"]  # the HPA owns it


def test_cache_volume_modes(rendered):
    def volumes(name):
        return {v["name"]: v for v in pod_template(rendered[name], "StatefulSet")["spec"]["volumes"]}

    assert volumes("defaults")["cache"]["emptyDir"]["sizeLimit"] == str(20 * 2**30)
    assert volumes("emptyDir-credentials")["cache"]["emptyDir"]["medium"] == "Memory"
    assert volumes("hostPath")["cache"]["hostPath"]["path"] == "/mnt/nvme/p2pcache"
    init = pod_template(rendered["hostPath"], "StatefulSet")["spec"]["initContainers"][0]
    assert init["volumeMounts"][0]["subPathExpr"] == "$(POD_NAME)"
    assert container(rendered["hostPath"], "StatefulSet")["volumeMounts"][0]["subPathExpr"] == "$(POD_NAME)"
    sts = find_one(rendered["volumeClaimTemplate"], "StatefulSet")
    assert "cache" not in volumes("volumeClaimTemplate")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "cache"
    assert claim["spec"]["storageClassName"] == "local-nvme"
    assert claim["spec"]["resources"]["requests"]["storage"] == str(500 * 10**9)


# What the Kubernetes schemas cannot check: names, selectors, ports and keys agree.

USER_SECRET = {"aws-keys": {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "key"},
               "my-cluster": {"token": "a-cluster-secret-of-the-users-own"},
               "p2pcache-tls": {"tls.crt": "...", "tls.key": "...", "ca.crt": "..."}}
USER_KEYS_FILE = "# the operator's own file\nops-reader 0ps/secret models\n"
USER_KEYS_SECRET = {"reader-keys": {"keys.txt": USER_KEYS_FILE, "other.txt": "not mounted"}}


def listen_port(cont: dict[str, Any]) -> int:
    return int(flags(cont)["listen"].rsplit(":", 1)[1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_selectors_images_and_volumes_agree(rendered, variant):
    objects = rendered[variant]
    workloads = find(objects, "Deployment") + find(objects, "StatefulSet")
    for workload in workloads:
        template = workload["spec"]["template"]
        assert selects(workload["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])
        volumes = {v["name"] for v in template["spec"].get("volumes", [])}
        volumes |= {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        for cont in template["spec"]["containers"] + template["spec"].get("initContainers", []):
            assert re.fullmatch(r"[^:\s]+:[^:\s]+", cont["image"]), cont["image"]
            assert {m["name"] for m in cont.get("volumeMounts", [])} <= volumes
    for service in find(objects, "Service"):
        targets = [w for w in workloads
                   if selects(service["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])]
        assert len(targets) == 1, service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            port_of(targets[0]["spec"]["template"]["spec"]["containers"][0], port["targetPort"])
    sts_labels = pod_template(objects, "StatefulSet")["metadata"]["labels"]
    for budget in find(objects, "PodDisruptionBudget"):
        assert selects(budget["spec"]["selector"]["matchLabels"], sts_labels)
    for hpa in find(objects, "HorizontalPodAutoscaler"):
        target = {"apiVersion": "apps/v1", "kind": "StatefulSet",
                  "name": find_one(objects, "StatefulSet")["metadata"]["name"]}
        assert hpa["spec"]["scaleTargetRef"] == target


@pytest.mark.parametrize("variant", VARIANTS)
def test_ports_and_probes_agree(rendered, variant):
    objects = rendered[variant]
    master, worker = container(objects, "Deployment"), container(objects, "StatefulSet")
    for cont in (master, worker):
        assert [p["containerPort"] for p in cont["ports"]] == [listen_port(cont)]
        for probe in ("readinessProbe", "livenessProbe"):
            assert port_of(cont, cont[probe]["httpGet"]["port"]) == listen_port(cont)
    assert master["readinessProbe"]["httpGet"]["path"] == "/health"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/_p2p/ready"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/_p2p/health"
    client = [s for s in find(objects, "Service") if s["metadata"]["labels"]["app.kubernetes.io/component"] == "client"]
    assert len(client) == 1 and client[0]["spec"]["type"] == "ClusterIP"
    (client_port,) = client[0]["spec"]["ports"]
    assert client_port["port"] == 80 and port_of(worker, client_port["targetPort"]) == listen_port(worker)


@pytest.mark.parametrize("variant", VARIANTS)
def test_worker_names_itself_and_finds_the_master(rendered, variant):
    objects = rendered[variant]
    services = {s["metadata"]["name"]: s for s in find(objects, "Service")}
    sts = find_one(objects, "StatefulSet")
    master, worker = container(objects, "Deployment"), container(objects, "StatefulSet")
    headless = services[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(headless["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
    worker_flags = flags(worker)
    assert worker_flags["id"] == "$(POD_NAME)"
    scheme = "https" if "tls-cert" in worker_flags else "http"
    assert worker_flags["advertise"] == (
        f"{scheme}://$(POD_NAME).{headless['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{listen_port(worker)}")
    assert container_env(worker, objects, "w-0", USER_SECRET)["POD_NAME"] == "w-0"
    assert worker_flags["cache-dir"] == {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}["cache"]

    master_url = urlsplit(worker_flags["master"])
    master_service = services[master_url.hostname.split(".")[0]]
    assert master_url.hostname == f"{master_service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    (master_port,) = master_service["spec"]["ports"]
    assert master_url.port == master_port["port"]
    assert port_of(master, master_port["targetPort"]) == listen_port(master)


@pytest.mark.parametrize("variant", VARIANTS)
def test_referenced_secrets_and_accounts_exist(rendered, variant):
    objects = rendered[variant]
    rendered_secrets = {o["metadata"]["name"]: o["data"] for o in find(objects, "Secret")}
    for kind in ("Deployment", "StatefulSet"):
        for var in container(objects, kind).get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in (USER_SECRET.get(ref["name"]) or rendered_secrets[ref["name"]])
        for volume in pod_template(objects, kind)["spec"].get("volumes", []):
            if "secret" not in volume:
                continue
            name = volume["secret"]["secretName"]
            data = USER_SECRET.get(name) or USER_KEYS_SECRET.get(name) or rendered_secrets[name]
            assert {item["key"] for item in volume["secret"].get("items", [])} <= set(data)
    for kind in ("Deployment", "StatefulSet"):
        account = pod_template(objects, kind)["spec"]["serviceAccountName"]
        assert account == "default" or find_one(objects, "ServiceAccount")["metadata"]["name"] == account


def test_s3_settings_reach_the_worker(rendered):
    worker = container(rendered["existing-secret-s3-endpoint"], "StatefulSet")
    assert flags(worker)["s3-endpoint"] == "http://minio.storage:9000"
    assert flags(worker)["allowed-buckets"] == "models,datasets"
    refs = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in worker["env"] if "valueFrom" in v
            and "secretKeyRef" in v["valueFrom"] and v["name"].startswith("AWS_")}
    assert refs == {key: {"name": "aws-keys", "key": key}
                    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    objects = rendered["emptyDir-credentials"]
    env = container_env(container(objects, "StatefulSet"), objects, "w-0")
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env["AWS_REGION"]) == (
        "AKIDEXAMPLE", "secret", "us-east-1")
    for name in ("defaults", "emptyDir-credentials"):
        assert "s3-endpoint" not in flags(container(rendered[name], "StatefulSet"))


@pytest.mark.parametrize(("variant", "expected"), [
    ("client-keys-inline", [ClientKey("loader", "s3cr3t/K7+=", frozenset({"models", "datasets"})),
                            ClientKey("admin", "an0ther")]),
    ("client-keys-existing", [ClientKey("ops-reader", "0ps/secret", frozenset({"models"}))]),
])
def test_reader_keys_reach_the_worker_as_the_file_its_flag_names(rendered, variant, expected, tmp_path):
    objects = rendered[variant]
    worker = container(objects, "StatefulSet")
    files = secret_files(pod_template(objects, "StatefulSet")["spec"], worker, objects, USER_KEYS_SECRET)
    path = flags(worker)["client-keys"]
    assert list(files) == [path]  # only the key the flag names is mounted
    assert list(parse_client_keys(files[path])) == expected
    # The worker's own CLI accepts every rendered flag, as the kubelet expands them, and loads that file.
    local = tmp_path / "client-keys"
    local.write_text(files[path])
    env = container_env(worker, objects, "w-0")
    args = [f"--client-keys={local}" if arg.startswith("--client-keys=") else expand_vars(arg, env)
            for arg in worker["args"]]
    parsed = build_parser().parse_args(args)
    assert list(WorkerConfig.from_args(parsed).client_keys) == expected
    mount = next(m for m in worker["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    assert mount["readOnly"]
    volume = next(v for v in pod_template(objects, "StatefulSet")["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["defaultMode"] == 0o440  # the fsGroup reads it, others do not
    for name in ("defaults", "existing-secret-s3-endpoint"):
        plain = container(rendered[name], "StatefulSet")
        assert "client-keys" not in flags(plain)
        assert secret_files(pod_template(rendered[name], "StatefulSet")["spec"], plain, rendered[name]) == {}


def test_changed_inline_reader_keys_roll_the_workers(chart, rendered):
    def checksum(values):
        template = pod_template(manifests(render(chart, values)), "StatefulSet")
        return template["metadata"].get("annotations", {}).get("checksum/client-keys")

    first = checksum({"clientKeys": {"keys": READER_KEYS}})
    assert first and first == checksum({"clientKeys": {"keys": READER_KEYS}})
    assert checksum({"clientKeys": {"keys": READER_KEYS[:1]}}) not in (None, first)
    assert checksum({"clientKeys": {"existingSecret": "reader-keys"}}) is None  # the operator restarts them


@pytest.mark.parametrize(("size", "percent", "capacity"), [
    ("20GiB", 90, 19327352832), ("500G", 90, 450 * 10**9), ("1Ti", 50, 2**39),
    ("16777216", 100, 16777216), ("750MB", 80, 600 * 10**6),
    ("9223372036854775807", 99, (2**63 - 1) * 99 // 100),  # size x percent overflows 64 bits: not computed so
])
def test_capacity_is_a_share_of_the_volume(chart, size, percent, capacity):
    objects = manifests(render(chart, {"cache": {"size": size, "capacityPercent": percent}}))
    assert flags(container(objects, "StatefulSet"))["capacity"] == str(capacity)


def test_grace_period_covers_prestop_and_drain(chart):
    objects = manifests(render(chart, {"worker": {"drainTimeout": 45, "preStopSleep": 7}}))
    pod = pod_template(objects, "StatefulSet")["spec"]
    worker = pod["containers"][0]
    assert worker["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "7"]
    assert flags(worker)["drain-timeout"] == "45"
    assert pod["terminationGracePeriodSeconds"] > 7 + 2 * 45  # the handoff, then in-flight reads


def test_drain_timeout_may_be_a_fraction_and_the_grace_period_rounds_up(chart):
    pod = pod_template(manifests(render(chart, {"worker": {"drainTimeout": 2.3, "preStopSleep": 5}})),
                       "StatefulSet")["spec"]
    assert flags(pod["containers"][0])["drain-timeout"] == "2.3"
    assert pod["terminationGracePeriodSeconds"] == 5 + 5 + 10  # ceil(2 x 2.3) + slack


def test_servicemonitor_scrapes_the_metrics_endpoints(rendered):
    objects = rendered["servicemonitor"]
    paths = {}
    for monitor in find(objects, "ServiceMonitor"):
        (endpoint,) = monitor["spec"]["endpoints"]
        matched = [s for s in find(objects, "Service")
                   if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert len(matched) == 1, monitor["metadata"]["name"]
        assert endpoint["port"] in {p["name"] for p in matched[0]["spec"]["ports"]}
        paths[matched[0]["spec"].get("clusterIP") == "None"] = endpoint["path"]
    assert paths == {True: "/_p2p/metrics", False: "/metrics"}  # headless -> every worker pod


def test_dashboard_uses_the_contract_metric_names(rendered):
    (config_map,) = [c for c in find(rendered["defaults"], "ConfigMap")
                     if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    (document,) = config_map["data"].values()
    dashboard = json.loads(document)
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"p2pcache_[a-z_]+", expr)}
    assert used == CONTRACT_METRICS


@pytest.mark.parametrize(("values", "where", "why"), [
    ({"worker": {"replicas": -1}}, "/worker/replicas", "minimum: got -1, want 0"),
    ({"autoscaling": {"maxReplicas": 0}}, "/autoscaling/maxReplicas", "minimum: got 0, want 1"),
    ({"cache": {"size": "20 gigs"}}, "/cache/size", "'20 gigs' does not match pattern"),
    ({"worker": {"minFree": "1.5GiB"}}, "/worker/minFree", "'1.5GiB' does not match pattern"),
    ({"cache": {"mode": "nfs"}}, "/cache/mode",
     "value must be one of 'emptyDir', 'hostPath', 'volumeClaimTemplate'"),
    ({"cache": {"capacityPercent": 120}}, "/cache/capacityPercent", "maximum"),
    ({"cluster": {"workerTtl": 3601}}, "/cluster/workerTtl", "maximum"),  # the master's --worker-ttl bounds
    ({"cluster": {"replicas": 1001}}, "/cluster/replicas", "maximum"),
    # The worker's bounds (worker/config.py): a day of seconds, a million of a count.
    ({"worker": {"drainTimeout": 100000}}, "/worker/drainTimeout", "maximum"),
    ({"worker": {"heartbeatInterval": 100000}}, "/worker/heartbeatInterval", "maximum"),
    ({"worker": {"originConcurrency": 2000000}}, "/worker/originConcurrency", "maximum"),
    ({"cache": {"sizee": "1GiB"}}, "/cache", "additional properties 'sizee' not allowed"),
    ({"clientKeys": {"keys": [{"accessKeyId": "a", "secretAccessKey": "two words"}]}},
     "/clientKeys/keys/0/secretAccessKey", "'two words' does not match pattern"),
    ({"clientKeys": {"keys": [{"accessKeyId": "a/b", "secretAccessKey": "s"}]}},
     "/clientKeys/keys/0/accessKeyId", "'a/b' does not match pattern"),
    ({"clientKeys": {"keys": [{"accessKeyId": "a", "secretAccessKey": "s", "buckets": ["Bad_Bucket"]}]}},
     "/clientKeys/keys/0/buckets/0", "'Bad_Bucket' does not match pattern"),
    ({"clientKeys": {"keys": [{"accessKeyId": "a"}]}}, "/clientKeys/keys/0", "missing property 'secretAccessKey'"),
])
def test_values_schema_rejects_bad_values(chart, values, where, why):
    with pytest.raises(helm.HelmValuesError) as raised:
        render(chart, values)
    assert f"at '{where}': {why}" in str(raised.value)
    report = helm.lint(CHART, values, strict=True)
    assert any(where in error and why in error for error in report["errors"])


KEY_TWICE = [{"accessKeyId": "loader", "secretAccessKey": "one"}, {"accessKeyId": "loader", "secretAccessKey": "two"}]


@pytest.mark.parametrize(("values", "message"), [
    ({"cluster": {"chunkSize": "1K"}}, "cluster.chunkSize: 1K must be from 64KiB to 1GiB"),
    ({"cluster": {"chunkSize": "0"}}, "cluster.chunkSize: 0 must be from 64KiB to 1GiB"),
    ({"cluster": {"chunkSize": "2GiB"}}, "cluster.chunkSize: 2GiB must be from 64KiB to 1GiB"),
    ({"cache": {"size": "10MiB"}}, "cache.size: 10MiB at cache.capacityPercent 90 gives each worker "
     "--capacity=9437184 bytes, less than 2 chunks of cluster.chunkSize 8MiB (16777216 bytes)"),
    ({"cache": {"size": "2GiB", "capacityPercent": 50}, "cluster": {"chunkSize": "1GiB"}},
     "cache.size: 2GiB at cache.capacityPercent 50 gives each worker --capacity=1073741824 bytes"),
    ({"cache": {"size": "9999999999999999999"}}, "cache.size: 9999999999999999999 is more than 2^63-1 bytes"),
    ({"cache": {"size": "99999999TiB"}}, "cache.size: 99999999TiB is more than 2^63-1 bytes"),
    ({"cache": {"size": "8388608TiB"}}, "cache.size: 8388608TiB is more than 2^63-1 bytes"),  # 2^63 exactly
    ({"worker": {"minFree": "99999999999TiB"}}, "worker.minFree: 99999999999TiB is more than 2^63-1 bytes"),
    ({"clientKeys": {"keys": KEY_TWICE}}, 'clientKeys.keys: accessKeyId "loader" is listed twice'),
])
def test_templates_refuse_values_the_programs_refuse(chart, values, message):
    """What JSON schema cannot say (sizes, a rule across two values, unique key ids) fails the
    render in one line naming the value, rather than pods that crash-loop."""
    with pytest.raises(helm.HelmError) as raised:
        render(chart, values)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value).split("): ", 1)[1]


@pytest.mark.parametrize("values", [
    {"cluster": {"chunkSize": "64KiB"}, "cache": {"size": "128KiB", "capacityPercent": 100}},
    {"cluster": {"chunkSize": "1GiB"}},
    {"cache": {"size": "9223372036854775807"}, "worker": {"minFree": "9223372036854775807"}},
    {"cache": {"size": "8388607TiB", "capacityPercent": 100}, "worker": {"minFree": "0"}},
    {"cache": {"size": "00000000000000000000000000020GiB"}},
    {"worker": {"drainTimeout": 86400, "heartbeatInterval": 86400, "originConcurrency": 1000000,
                "preStopSleep": 1000000}},
    {"worker": {"drainTimeout": 0, "heartbeatInterval": 0.001, "originConcurrency": 1}},
    {"preload": {"urls": ["s3://models/"], "waitReady": 1000000, "activeDeadlineSeconds": 10000000}},
])
def test_values_at_the_bounds_render_flags_the_programs_accept(chart, values):
    objects = manifests(render(chart, values))
    worker, master = container(objects, "StatefulSet"), container(objects, "Deployment")
    env = container_env(worker, objects, "w-0")
    parsed = WorkerConfig.from_args(build_parser().parse_args([expand_vars(a, env) for a in worker["args"]]))
    MasterConfig.from_args(build_parser().parse_args(master["args"]))
    size = parse_size(values.get("cache", {}).get("size", "20GiB"))
    assert parsed.capacity == size * values.get("cache", {}).get("capacityPercent", 90) // 100  # exact
    assert parsed.min_free == parse_size(values.get("worker", {}).get("minFree", "1GiB"))
    for key, flag in (("drainTimeout", "drain_timeout"), ("heartbeatInterval", "heartbeat_interval"),
                      ("originConcurrency", "origin_concurrency")):
        if key in values.get("worker", {}):
            assert getattr(parsed, flag) == values["worker"][key]
    assert worker["lifecycle"]["preStop"]["exec"]["command"][1] == str(values.get("worker", {}).get("preStopSleep", 5))
    for job in find(objects, "Job"):
        args = build_parser().parse_args(job["spec"]["template"]["spec"]["containers"][0]["args"])
        assert args.wait_ready == values["preload"]["waitReady"]
        assert job["spec"]["activeDeadlineSeconds"] == values["preload"]["activeDeadlineSeconds"]
    for obj in objects:
        kubernetes_validate.validate(obj, KUBE_VERSIONS[-1], strict=True)


def test_long_release_names_stay_dns_labels(chart):
    name = "a-release-name-that-is-exactly-fifty-three-characters"
    assert len(name) == 53  # Helm's maximum
    objects = manifests(render(chart, name=name))
    for obj in objects:
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
    sts = find_one(objects, "StatefulSet")
    assert len(f"{sts['metadata']['name']}-9999") <= 63
    assert len(f"{sts['metadata']['name']}-{'x' * 11}") <= 63  # controller-revision-hash label


DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


@pytest.mark.parametrize("name", ["rel.dots", "1cache", "a.b.c"])  # release names Helm accepts
def test_release_names_that_make_no_service_name_fail_early(chart, name):
    with pytest.raises(helm.HelmError) as raised:
        render(chart, name=name)
    assert f'the release name "{name}"' in str(raised.value) and "not a DNS-1035 label" in str(raised.value)
    objects = manifests(render(chart, {"fullnameOverride": "cache"}, name=name))  # the way out it names
    assert all(DNS_1035.fullmatch(s["metadata"]["name"]) for s in find(objects, "Service"))
    with pytest.raises(helm.HelmError, match='gives the Service name "cache-P2P"'):
        render(chart, {"nameOverride": "P2P"}, name="cache")


@pytest.mark.parametrize("name", ["cache", "p2pcache", "my-p2pcache-prod", "c0"])
def test_release_names_render_dns_1035_service_names(chart, name):
    for service in find(manifests(render(chart, name=name)), "Service"):
        assert DNS_1035.fullmatch(service["metadata"]["name"]), service["metadata"]["name"]


def test_readme_names_the_objects_the_chart_renders(chart):
    """Names are `<fullname>`: the release name only when it contains the chart's name."""
    readme = (CHART.parent.parent / "README.md").read_text()
    for release, fullname in (("p2pcache", "p2pcache"), ("cache", "cache-p2pcache")):
        objects = manifests(render(chart, name=release))
        names = {(o["kind"], o["metadata"]["name"]) for o in objects}
        assert {("Service", fullname), ("Service", f"{fullname}-master"), ("Secret", f"{fullname}-cluster"),
                ("Service", f"{fullname}-worker-headless"), ("StatefulSet", f"{fullname}-worker")} <= names
        assert f"`{fullname}-cluster`" in readme
        assert f"`http://{fullname}.<namespace>.svc.cluster.local`" in readme
    assert "`<fullname>-worker-N.<fullname>-worker-headless.<namespace>.svc.cluster.local`" in readme
    assert "<release>" not in readme.replace("`<release>-p2pcache`", "")


def test_notes_tell_how_to_read_and_scale(chart):
    notes = render(chart)["p2pcache/templates/NOTES.txt"]
    client = f"http://p2pcache.{NAMESPACE}.svc.cluster.local"
    assert f"curl -r 0-1048575 -o part.bin {client}/my-bucket/" in notes
    assert f'endpoint_url="{client}"' in notes
    assert "kubectl -n ml scale statefulset p2pcache-worker --replicas=" in notes
    hpa_notes = render(chart, {"autoscaling": {"enabled": True}})["p2pcache/templates/NOTES.txt"]
    assert "get hpa p2pcache-worker" in hpa_notes
    assert "--aws-sigv4" not in notes
    signed_notes = render(chart, {"clientKeys": {"keys": READER_KEYS}})["p2pcache/templates/NOTES.txt"]
    assert f'curl --aws-sigv4 "aws:amz:us-east-1:s3" --user ACCESS_KEY_ID:SECRET_ACCESS_KEY' in signed_notes


def notes_commands(notes: str) -> list[list[str]]:
    """The notes' indented command lines, split as a shell would (boto3 lines are left out)."""
    return [shlex.split(line) for line in notes.splitlines()
            if line.startswith("  ") and not line.lstrip().startswith(("s3", "(", "for ", "The "))]


def test_notes_under_tls_print_commands_that_verify_the_certificate(chart):
    """The certificate names the Services, never 127.0.0.1, and is signed by the Secret's CA:
    every printed URL is a Service at its port, or a port-forward reached by a Service's name."""
    values = {"tls": {"enabled": True, "existingSecret": "p2pcache-tls"}, "clientKeys": {"keys": READER_KEYS}} | PRELOAD
    files = render(chart, values)
    objects, notes = manifests(files), files["p2pcache/templates/NOTES.txt"]
    service_ports = {f"{s['metadata']['name']}.{NAMESPACE}.svc.cluster.local": s["spec"]["ports"][0]["port"]
                     for s in find(objects, "Service")}
    master = container(objects, "Deployment")
    commands = notes_commands(notes)
    assert ["kubectl", "-n", NAMESPACE, "get", "secret", "p2pcache-tls", "-o", "jsonpath={.data.ca\\.crt}",
            "|", "base64", "-d", ">", "ca.crt"] in commands
    forwarded = {}  # local port -> Service port, from the port-forward lines
    urls = 0
    for command in commands:
        if command[:4] == ["kubectl", "-n", NAMESPACE, "port-forward"]:
            local, _, remote = command[5].partition(":")
            forwarded[int(local)] = int(remote or local)
        for url in (urlsplit(word) for word in command if word.startswith(("http://", "https://"))):
            urls += 1
            assert url.scheme == "https" and url.hostname in service_ports, command
            port = url.port or 443
            if command[0] == "curl":
                assert command[1:3] == ["--cacert", "ca.crt"], command
            if "--resolve" in command:  # a port-forward reached by the name the certificate holds
                assert command[command.index("--resolve") + 1] == f"{url.hostname}:{port}:127.0.0.1"
                assert forwarded[port] == service_ports[url.hostname], command
            elif command[0] == "curl":
                assert port == service_ports[url.hostname], command  # in the cluster
    assert urls == 6  # 4 curl lines, 2 status lines
    for line in notes.splitlines():
        if "boto3.client(" in line:
            assert 'verify="ca.crt"' in line and 'endpoint_url="https://p2pcache.ml.svc.cluster.local:80"' in line
    assert "AWS_ENDPOINT_URL=https://p2pcache.ml.svc.cluster.local:80 and AWS_CA_BUNDLE=ca.crt" in notes
    (in_pod,) = [c for c in commands if c[3:5] == ["exec", "deploy/p2pcache-master"]]
    args = build_parser().parse_args(in_pod[in_pod.index("--") + 1:][1:])
    assert (args.command, args.tls_ca, args.url) == ("status", flags(master)["tls-ca"], PRELOAD["preload"]["urls"][0])
    assert urlsplit(args.master).hostname in service_ports and urlsplit(args.master).port == 7070
    assert "P2PCACHE_CLUSTER_SECRET" in {e["name"] for e in master["env"]}  # the pod signs with the secret
    (outside,) = [c for c in commands if c[0].startswith("P2PCACHE_CLUSTER_SECRET=")]
    args = build_parser().parse_args(outside[outside.index("p2pcache") + 1:])
    assert args.tls_ca == "ca.crt" and urlsplit(args.master).hostname in service_ports
    assert f'"127.0.0.1 {urlsplit(args.master).hostname}" to /etc/hosts' in notes.replace("\n", " ")
    assert "127.0.0.1" not in "".join(w for c in commands for w in c if w.startswith("https://"))


@pytest.mark.parametrize(("values", "client"), [
    ({}, "http://p2pcache.ml.svc.cluster.local"),
    ({"clientService": {"port": 8080}}, "http://p2pcache.ml.svc.cluster.local:8080"),
    ({"clientService": {"port": 443}}, "http://p2pcache.ml.svc.cluster.local:443"),
    ({"tls": {"enabled": True, "existingSecret": "t"}}, "https://p2pcache.ml.svc.cluster.local:80"),
    ({"tls": {"enabled": True, "existingSecret": "t"}, "clientService": {"port": 443}},
     "https://p2pcache.ml.svc.cluster.local"),
])
def test_notes_name_the_client_port_unless_it_is_the_schemes(chart, values, client):
    notes = render(chart, values)["p2pcache/templates/NOTES.txt"]
    assert f'endpoint_url="{client}"' in notes and f" {client}/my-bucket/" in notes


def test_notes_with_tls_and_the_systems_cas_pass_no_ca(chart):
    values = {"tls": {"enabled": True, "existingSecret": "t", "caKey": ""}}
    notes = render(chart, values)["p2pcache/templates/NOTES.txt"]
    assert "ca.crt" not in notes and "--tls-ca" not in notes
    assert "--resolve p2pcache-master.ml.svc.cluster.local:7070:127.0.0.1" in notes


def test_image_user_matches_the_pod_security_context(rendered):
    dockerfile = (CHART.parent.parent / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert re.search(r'^ENTRYPOINT \["p2pcache"\]$', dockerfile, re.M)
    (user,) = re.findall(r"^USER (\d+)", dockerfile, re.M)
    for kind in ("Deployment", "StatefulSet"):
        context = pod_template(rendered["defaults"], kind)["spec"]["securityContext"]
        assert context["runAsNonRoot"] and context["runAsUser"] == int(user) != 0
    ignored = Path(CHART.parent.parent / ".dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignored)


PRELOAD = {"preload": {"urls": ["s3://models/llama-3-8b/", "s3://models/tok.json"], "pin": True}}


@pytest.mark.parametrize("extra", [{}, {"tls": {"enabled": True, "existingSecret": "p2pcache-tls"}},
                                   {"clusterSecret": {"enabled": False}}])
def test_preload_job_runs_the_preload_against_the_release_master(chart, extra):
    objects = manifests(render(chart, PRELOAD | extra))
    for obj in objects:
        kubernetes_validate.validate(obj, KUBE_VERSIONS[-1], strict=True)
    job = find_one(objects, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    cont = job["spec"]["template"]["spec"]["containers"][0]
    master = next(s for s in find(objects, "Service") if s["metadata"]["name"] == "p2pcache-master")
    scheme = "https" if extra.get("tls") else "http"
    url = f"{scheme}://{master['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{master['spec']['ports'][0]['port']}"
    # The args are a valid command line of this very CLI.
    args = build_parser().parse_args(cont["args"])
    assert (args.command, args.urls, args.pin, args.master) == ("preload", PRELOAD["preload"]["urls"], True, url)
    assert args.tls_ca == ("/etc/p2pcache/tls/ca.crt" if extra.get("tls") else "")
    env = {e["name"]: e for e in cont.get("env", [])}
    if extra.get("clusterSecret"):
        assert "P2PCACHE_CLUSTER_SECRET" not in env
    else:  # the same Secret and key the master verifies with
        master_env = {e["name"]: e for e in container(objects, "Deployment")["env"]}
        assert env["P2PCACHE_CLUSTER_SECRET"] == master_env["P2PCACHE_CLUSTER_SECRET"]
    notes = render(chart, PRELOAD | extra)["p2pcache/templates/NOTES.txt"]
    assert f"kubectl -n {NAMESPACE} logs -f job/p2pcache-preload" in notes
    if not extra.get("tls"):  # with TLS, at a name the certificate holds: test_notes_under_tls_...
        assert "p2pcache status --master http://127.0.0.1:7070 s3://models/llama-3-8b/" in notes


def test_no_preload_job_without_urls(chart):
    assert find(manifests(render(chart)), "Job") == []
    assert "logs -f job/" not in render(chart)["p2pcache/templates/NOTES.txt"]
    with pytest.raises(helm.HelmValuesError, match="preload/urls/0"):
        render(chart, {"preload": {"urls": ["models/llama"]}})


@pytest.mark.parametrize(("cpus", "processes", "request_cpu", "limit_cpu"), [
    (None, "2", "2", "2"), (4, "4", "4", "4"),
    # No CPU limit, so no cgroup quota: `auto` would start one process per CPU of the node (64 x ~43 MB
    # against the 2Gi limit on a 64-CPU node). The 500m request, rounded up, is the count instead.
    (0, "1", "500m", None),
])
def test_cpus_set_the_cpu_request_limit_and_serving_processes_together(chart, cpus, processes, request_cpu,
                                                                      limit_cpu):
    values = {} if cpus is None else {"worker": {"cpus": cpus}}
    worker = container(manifests(render(chart, values)), "StatefulSet")
    assert flags(worker)["serve-processes"] == processes
    assert worker["resources"]["requests"] == {"cpu": request_cpu, "memory": "512Mi"}
    assert worker["resources"]["limits"].get("cpu") == limit_cpu
    assert worker["resources"]["limits"]["memory"] == "2Gi"
    parsed = WorkerConfig.from_args(_worker_parser().parse_args(
        ["--master", "http://m", "--cache-dir", "/c", f"--serve-processes={processes}"]))
    assert parsed.serve_processes == int(processes)


@pytest.mark.parametrize(("resources", "processes"), [
    ({"requests": {"cpu": "2500m"}}, 3), ({"requests": {"cpu": 1.5}}, 2), ({"requests": {"cpu": "0.1"}}, 1),
    ({"requests": {"cpu": "1"}, "limits": {"cpu": "4"}}, 4),  # the limit, which is also the cgroup quota
    ({"requests": {"cpu": None}}, 1), ({"requests": {"cpu": "4000"}}, 256),  # the most --serve-processes takes
])
def test_cpus_0_counts_serving_processes_from_the_cpu_resources(chart, resources, processes):
    worker = container(manifests(render(chart, {"worker": {"cpus": 0, "resources": resources}})), "StatefulSet")
    assert flags(worker)["serve-processes"] == str(processes)


def test_cpus_0_with_a_cpu_the_chart_cannot_count_fails(chart):
    with pytest.raises(helm.HelmError, match='worker.resources: CPU "2k": give it as cores'):
        render(chart, {"worker": {"cpus": 0, "resources": {"requests": {"cpu": "2k"}}}})


def _worker_parser():
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p
