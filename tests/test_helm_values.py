"""The chart's values: what it renders from sizes, times and CPUs, and what it refuses before a pod
would (the values schema, the templates' one-line failures, release names)."""

from __future__ import annotations

import argparse
import copy
import re

import helm_python as helm
import kubernetes_validate
import pytest

from master.config import MasterConfig
from p2pcache.cli import build_parser
from p2pcache.sizes import parse_size
from worker.config import WorkerConfig, add_arguments

from fakekube import FakeKube
from helm_render import (
    CHART, KUBE_VERSIONS, NAMESPACE, chart, container, container_env, expand_vars, find, find_one, flags, manifests,
    pod_template, render, render_on,
)


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
    # Kubernetes takes a count from 0 or a percentage; 0 (or 0%) would block every node drain for good.
    ({"podDisruptionBudget": {"maxUnavailable": -1}}, "/podDisruptionBudget/maxUnavailable", "minimum: got -1, want 1"),
    ({"podDisruptionBudget": {"maxUnavailable": 0}}, "/podDisruptionBudget/maxUnavailable", "minimum: got 0, want 1"),
    ({"podDisruptionBudget": {"maxUnavailable": "lots"}}, "/podDisruptionBudget/maxUnavailable",
     "'lots' does not match pattern '^([1-9][0-9]?|100)%$'"),
    ({"podDisruptionBudget": {"maxUnavailable": "0%"}}, "/podDisruptionBudget/maxUnavailable", "'0%' does not match"),
    ({"podDisruptionBudget": {"maxUnavailable": "101%"}}, "/podDisruptionBudget/maxUnavailable", "'101%' does not match"),
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
    ({"autoscaling": {"enabled": True, "minReplicas": 10, "maxReplicas": 2}},
     "autoscaling.minReplicas: 10 is more than autoscaling.maxReplicas 2"),
    # The worker takes any positive interval; the master hears at most three beats a second (--worker-ttl >= 1).
    ({"worker": {"heartbeatInterval": 1e-7}}, "worker.heartbeatInterval: 1e-07 is under a third of a second"),
    ({"worker": {"heartbeatInterval": 0.33}}, "worker.heartbeatInterval: 0.33 is under a third of a second, the "
     "fastest beat the master is built to hear (three per --worker-ttl, at least 1 s)"),
    # A volume the worker sees the size of must hold --capacity and the --min-free it keeps free.
    ({"cache": {"mode": "volumeClaimTemplate", "size": "1GiB"}}, "cache.size: 1GiB (1073741824 bytes) cannot hold "
     "the worker's --capacity=966367641 (cache.capacityPercent 90) and worker.minFree 1GiB (1073741824 bytes) it "
     "keeps free: the worker would never fill its capacity"),
    ({"cache": {"mode": "volumeClaimTemplate", "size": "9GiB"}}, "cache.size: 9GiB (9663676416 bytes) cannot hold"),
    ({"cache": {"mode": "volumeClaimTemplate", "size": "2GiB"}, "worker": {"minFree": "3GiB"}},
     "cache.size: 2GiB (2147483648 bytes) cannot hold the worker's --capacity=1932735283"),
    ({"cache": {"mode": "emptyDir", "emptyDir": {"medium": "Memory"}, "size": "1GiB"}},  # tmpfs is sizeLimit big
     "cache.size: 1GiB (1073741824 bytes) cannot hold the worker's --capacity=966367641"),
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
    {"worker": {"drainTimeout": 0, "heartbeatInterval": 1 / 3, "originConcurrency": 1}},
    {"cache": {"mode": "volumeClaimTemplate", "size": "10GiB"}},  # 9GiB of capacity + 1GiB of min-free, exactly
    {"cache": {"mode": "volumeClaimTemplate", "size": "1GiB", "capacityPercent": 50}, "worker": {"minFree": "512MiB"},
     "podDisruptionBudget": {"maxUnavailable": "100%"}, "autoscaling": {"enabled": True, "minReplicas": 4,
                                                                       "maxReplicas": 4}},
    {"cache": {"mode": "emptyDir", "size": "1GiB"}, "podDisruptionBudget": {"maxUnavailable": "1%"}},  # node disk
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


MEMORY_CACHE = {"mode": "emptyDir", "emptyDir": {"medium": "Memory"}}


@pytest.mark.parametrize(("values", "message"), [
    ({"cache": MEMORY_CACHE}, "cache.emptyDir.medium Memory: cache.size 20GiB and 3 worker processes (150Mi each) "
                              "need 20930Mi, more than worker.resources.limits.memory 2Gi"),
    ({"cache": MEMORY_CACHE | {"size": "3GiB"}, "worker": {"cpus": 4, "resources": {"limits": {"memory": "3.5Gi"}}}},
     "cache.size 3GiB and 5 worker processes (150Mi each) need 3822Mi, more than worker.resources.limits.memory 3.5Gi"),
    ({"cache": MEMORY_CACHE | {"size": "1GiB"}, "worker": {"resources": {"limits": {"memory": "2e9"}}}},
     'worker.resources.limits.memory: memory "2e9": give it as bytes with an optional unit'),
])
def test_a_cache_in_memory_must_fit_the_memory_limit_with_the_processes(chart, values, message):
    """tmpfs pages count against the pod's memory limit: a cache larger than what the limit leaves
    the worker's processes would have it OOM-killed as it fills, and at every restart after."""
    with pytest.raises(helm.HelmError) as raised:
        render(chart, values)
    assert message in str(raised.value)


@pytest.mark.parametrize("values", [
    {"cache": MEMORY_CACHE | {"size": "1GiB"}, "worker": {"minFree": "100MiB"}},  # 1 GiB + 3 x 150 MiB in 2 GiB
    {"cache": MEMORY_CACHE | {"size": "3GiB"}, "worker": {"cpus": 4, "minFree": "300MiB",
                                                          "resources": {"limits": {"memory": "4.1G"}}}},
    {"cache": MEMORY_CACHE | {"size": "20GiB"},
     "worker": {"resources": {"limits": {"memory": None}}}},  # no limit: the sizeLimit holds it
    {"cache": {"size": "20GiB"}},  # on the node's disk the limit does not count it
])
def test_a_cache_in_memory_that_fits_renders(chart, values):
    volumes = pod_template(manifests(render(chart, values)), "StatefulSet")["spec"]["volumes"]
    assert {v["name"]: v for v in volumes}["cache"]["emptyDir"]["sizeLimit"] == str(parse_size(values["cache"]["size"]))


def _worker_parser():
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p


def vct(size: str, **claim) -> dict:
    return {"cache": {"mode": "volumeClaimTemplate", "size": size, "volumeClaimTemplate": claim}}


def as_stored(statefulset: dict, storage: str | None) -> dict:
    """The StatefulSet as the API server gives it back: its claims defaulted, their size as the
    canonical quantity `storage` ("214748364800" for the chart's 200GiB; "200Gi" as `kubectl` made it)."""
    statefulset = copy.deepcopy(statefulset)
    for claim in statefulset["spec"].get("volumeClaimTemplates", []):
        claim.update(apiVersion="v1", kind="PersistentVolumeClaim", status={"phase": "Pending"})
        claim["spec"]["volumeMode"] = "Filesystem"
        claim["spec"]["resources"]["requests"]["storage"] = storage
    return statefulset


@pytest.fixture(scope="module")
def kube():
    with FakeKube() as server:
        yield server


def upgrade(kube: FakeKube, chart, installed: dict, storage: str | None, values: dict) -> list[dict]:
    """`helm upgrade` to `values` of a release installed with `installed`, whose StatefulSet `lookup` finds."""
    statefulset = find_one(manifests(render(chart, installed)), "StatefulSet")
    kube.statefulsets[NAMESPACE, "p2pcache-worker"] = as_stored(statefulset, storage)
    kube.paths.clear()
    return manifests(render_on(kube.url, chart, values))


ORPHAN = "delete the StatefulSet and keep its pods (kubectl -n ml delete statefulset p2pcache-worker --cascade=orphan), then helm upgrade"


@pytest.mark.parametrize(("installed", "storage", "values", "message"), [
    (vct("200GiB"), "214748364800", vct("400GiB"), "cache.size: 400GiB (429496729600 bytes) is not the 214748364800 the "
     "workers' volume claims were made with, and Kubernetes does not let an upgrade change a StatefulSet's "
     "volumeClaimTemplates: to resize, expand each PVC cache-p2pcache-worker-N to 429496729600 bytes (kubectl -n ml "
     f"patch pvc; its storage class must allow volume expansion), {ORPHAN}"),
    (vct("200GiB"), "200Gi", vct("100GiB"), "cache.size: 100GiB (107374182400 bytes) is not the 200Gi"),
    (vct("500G"), "500G", vct("500GiB"), "cache.size: 500GiB (536870912000 bytes) is not the 500G"),
    ({}, None, vct("20GiB"), "cache.mode: volumeClaimTemplate, for workers made with emptyDir, changes the "
     f"StatefulSet's volumeClaimTemplates, which Kubernetes does not let an upgrade change: {ORPHAN}"),
    (vct("20GiB"), "21474836480", {"cache": {"mode": "hostPath"}}, "cache.mode: hostPath, for workers made with "
     f"volumeClaimTemplate, changes the StatefulSet's volumeClaimTemplates, which Kubernetes does not let an upgrade "
     f"change: {ORPHAN} (the workers' PVCs stay until you delete them)"),
    (vct("20GiB"), "21474836480", vct("20GiB", storageClassName="fast"),
     'cache.volumeClaimTemplate.storageClassName: "fast" is not the "" the workers\' volume claims were made with'),
])
def test_an_upgrade_that_changes_the_volume_claims_is_refused(chart, kube, installed, storage, values, message):
    """Kubernetes refuses to update a StatefulSet's volumeClaimTemplates: the render refuses first, in
    one line saying what to do instead, rather than `helm upgrade` failing in the API server."""
    with pytest.raises(helm.HelmError) as raised:
        upgrade(kube, chart, installed, storage, values)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    render(chart, values)  # `helm template` has nothing to look up: it renders


@pytest.mark.parametrize(("installed", "storage", "values"), [
    (vct("200GiB"), "214748364800", vct("200GiB") | {"worker": {"replicas": 5}}),
    (vct("200GiB"), "200Gi", vct("200Gi", storageClassName="")),  # the same bytes, written otherwise
    (vct("500G", storageClassName="local-nvme"), "500G",
     {"cache": vct("500G", storageClassName="local-nvme")["cache"] | {"capacityPercent": 80}}),
    ({}, None, {"cache": {"mode": "hostPath", "size": "1TiB"}}),  # no claims before or after
])
def test_an_upgrade_that_keeps_the_volume_claims_renders(chart, kube, installed, storage, values):
    objects = upgrade(kube, chart, installed, storage, values)
    claims = find_one(objects, "StatefulSet")["spec"].get("volumeClaimTemplates")
    stored = kube.statefulsets[NAMESPACE, "p2pcache-worker"]["spec"].get("volumeClaimTemplates")
    assert (claims is None) == (stored is None)
    assert f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets/p2pcache-worker" in kube.paths  # it did look
