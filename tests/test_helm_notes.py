"""What the chart tells an operator: the install notes' commands, and the README's object names."""

from __future__ import annotations

import shlex
from urllib.parse import urlsplit

import pytest

from p2pcache.cli import build_parser

from helm_render import CHART, NAMESPACE, PRELOAD, READER_KEYS, chart, container, find, flags, manifests, render


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
