"""The Helm chart: lint, render variants, Kubernetes schemas, cross-references, the preload Job."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import helm_python as helm
import kubernetes_validate
import pytest

from p2pcache.cli import build_parser
from worker.config import WorkerConfig
from worker.readers import ClientKey, parse_client_keys

from helm_render import (
    CHART, KUBE_VERSIONS, NAMESPACE, PRELOAD, READER_KEYS, chart, container, container_env, expand_vars, find,
    find_one, flags, manifests, pod_template, render, secret_files,
)


MONITORING = ("monitoring.coreos.com/v1",)


CREDENTIALS = {"s3": {"accessKeyId": "AKIDEXAMPLE", "secretAccessKey": "secret"}}


CONTRACT_METRICS = {
    "p2pcache_requests_total", "p2pcache_bytes_served_total", "p2pcache_cache_hits_total",
    "p2pcache_cache_misses_total", "p2pcache_origin_bytes_total", "p2pcache_peer_bytes_total",
    "p2pcache_fills_in_flight", "p2pcache_store_bytes", "p2pcache_store_capacity_bytes",
    "p2pcache_ring_epoch", "p2pcache_ring_workers",
}

# name -> (values, API versions the cluster offers)


VARIANTS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "defaults": ({}, ()),
    "emptyDir-credentials": ({**CREDENTIALS, "cache": {"mode": "emptyDir", "size": "1GiB",
                                                  "emptyDir": {"medium": "Memory"}},
                              "worker": {"minFree": "100MiB"}}, ()),
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


@pytest.mark.parametrize("ca_key", ["ca.crt", ""])
def test_servicemonitor_under_tls_scrapes_https_verified_like_the_pods(chart, rendered, ca_key):
    """A server with TLS hangs up on plain HTTP: under TLS Prometheus scrapes over https, trusting
    the CA the pods trust (the Secret's key their --tls-ca names; none: the system's CAs) at a
    Service's name the certificate holds, as it reaches each pod by an IP the certificate lacks.
    A scrape of the rendered pods: test_rendered_tls_pods_verify_each_other_with_the_secrets_ca."""
    for monitor in find(rendered["servicemonitor"], "ServiceMonitor"):  # plain without TLS
        assert {"scheme", "tlsConfig"}.isdisjoint(monitor["spec"]["endpoints"][0])
    values = {"tls": {"enabled": True, "existingSecret": "p2pcache-tls", "caKey": ca_key},
              "metrics": {"serviceMonitor": {"enabled": True}}}
    objects = manifests(render(chart, values, api_versions=MONITORING))
    names = {f"{s['metadata']['name']}.{NAMESPACE}.svc.cluster.local": s for s in find(objects, "Service")}
    for monitor in find(objects, "ServiceMonitor"):
        (endpoint,) = monitor["spec"]["endpoints"]
        component = monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        kind = {"master": "Deployment", "worker": "StatefulSet"}[component]
        pod = pod_template(objects, kind)
        assert endpoint["scheme"] == "https"
        tls = endpoint["tlsConfig"]
        if ca_key:
            ca = flags(container(objects, kind))["tls-ca"]
            mount = next(m for m in container(objects, kind)["volumeMounts"] if ca.startswith(m["mountPath"] + "/"))
            volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
            assert tls["ca"] == {"secret": {"name": volume["secret"]["secretName"], "key": ca.rsplit("/", 1)[1]}}
        else:
            assert "ca" not in tls and "tls-ca" not in flags(container(objects, kind))
        assert "insecureSkipVerify" not in tls
        service = names[tls["serverName"]]  # a Service name, which the README has the certificate hold
        assert selects(service["spec"]["selector"], pod["metadata"]["labels"])
        assert service["spec"].get("clusterIP") != "None"  # the headless name itself is no wildcard's match


def test_dashboard_uses_the_contract_metric_names(rendered):
    (config_map,) = [c for c in find(rendered["defaults"], "ConfigMap")
                     if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    (document,) = config_map["data"].values()
    dashboard = json.loads(document)
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"p2pcache_[a-z_]+", expr)}
    assert used == CONTRACT_METRICS


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
