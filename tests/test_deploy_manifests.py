"""The Kubernetes manifests in deploy/kubernetes/ (and examples/kubernetes.yaml): valid
against the Kubernetes schemas (offline, kubernetes-validate's copy for one recent
version), and consistent with pmd itself so that they cannot drift: probe paths in pmd's
OpenAPI document, probe ports where pmd listens, PMD_* names pmd reads and values it
accepts, a termination grace that holds the programs' worst-case shutdown."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pmd_init.api.probeport import LOOP_PATIENCE
from pmd_init.model.budget import plan_shutdown
from pmd_init.settings import parse_settings
from pmd_init.store.programs import parse_programs
from tests.harness import ROOT, Pmd

KUBERNETES = "1.34.0"
DEPLOY = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
MANIFESTS = [*DEPLOY, ROOT / "examples" / "kubernetes.yaml"]


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def workloads(path: Path) -> list[dict[str, Any]]:
    return [d for d in documents(path) if d["kind"] in ("Deployment", "StatefulSet",
                                                         "DaemonSet", "Pod")]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]


def pmd_container(workload: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod_spec(workload)["containers"] if c["image"].startswith("pmd"))


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


@pytest.fixture(scope="module")
def openapi_paths(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    with Pmd(tmp_path_factory.mktemp("openapi"), []) as pmd:
        return set(pmd.http.get("/api/openapi.json").json()["paths"])


def test_the_deploy_folder_has_the_manifests():
    assert {p.name for p in DEPLOY} >= {"pmd.yaml", "sidecar.yaml"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_document_validates_against_the_kubernetes_schemas(path):
    docs = documents(path)
    assert docs
    for doc in docs:
        # strict: an unknown field (a typo like periodSecond) is an error too
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_schema_check_catches_a_misspelt_probe_field():
    doc = workloads(ROOT / "deploy" / "kubernetes" / "pmd.yaml")[0]
    pmd_container(doc)["livenessProbe"]["periodSecond"] = 10
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_probe_paths_ports_and_settings_are_pmds_own(path, openapi_paths, monkeypatch):
    known = set(re.findall(r"PMD_[A-Z_]+", (ROOT / "pmd_init" / "settings.py").read_text()
                           + (ROOT / "entrypoint").read_text()))
    for workload in workloads(path):
        container = pmd_container(workload)
        env = env_of(container)
        assert set(env) <= known, set(env) - known
        for name in [k for k in os.environ if k.startswith("PMD_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("PMD_API_KEY", "x")  # a key file may be named: not read here
        monkeypatch.delenv("PMD_API_KEY_FILE", raising=False)
        settings = parse_settings([])  # a value pmd refuses exits here (SystemExit)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        listening = {settings.port} | ({settings.probe_address[1]}
                                       if settings.probe_address else set())
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container.get(kind)
            assert probe is not None, f"{path.name}: no {kind}"
            get = probe["httpGet"]
            assert get["path"].split("?")[0] in openapi_paths, get["path"]
            port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
            assert port in listening, (kind, port, listening)


@pytest.mark.parametrize("path", DEPLOY, ids=lambda p: p.name)
def test_deploy_probes_have_one_meaning_each_and_timings_from_pmds_figures(path):
    for workload in workloads(path):
        container = pmd_container(workload)
        env = env_of(container)
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["startupProbe"]["httpGet"]["path"] == "/startupz"
        # the probe port says "wedged" within LOOP_PATIENCE: an answer, not a timeout
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[kind]["timeoutSeconds"] > LOOP_PATIENCE
        # the Service drops the pod within the delay: readiness notices it in time
        ready = container["readinessProbe"]
        assert ready["periodSeconds"] * ready.get("failureThreshold", 3) <= \
            float(env["PMD_SHUTDOWN_DELAY"])
        # no preStop: pmd's shutdown delay does that job
        assert "lifecycle" not in container
        assert float(env["PMD_TERMINATION_GRACE"]) == \
            pod_spec(workload)["terminationGracePeriodSeconds"]


def test_the_deployments_programs_fit_the_termination_grace_and_the_startup_probe():
    path = ROOT / "deploy" / "kubernetes" / "pmd.yaml"
    config = next(d for d in documents(path) if d["kind"] == "ConfigMap")
    specs = parse_programs(json.loads(config["data"]["programs.json"]))
    env = env_of(pmd_container(workloads(path)[0]))
    plan = plan_shutdown(specs, delay=float(env["PMD_SHUTDOWN_DELAY"]),
                         grace=float(env.get("PMD_GRACE", 8)),
                         termination_grace=float(env["PMD_TERMINATION_GRACE"]))
    assert plan.problem is None, plan.problem
    startup = pmd_container(workloads(path)[0])["startupProbe"]
    longest_wait = max((s.readiness.timeout_seconds or 0) + s.delay_seconds + s.startsecs
                       for s in specs if s.readiness is not None)
    assert startup["periodSeconds"] * startup["failureThreshold"] >= longest_wait


@pytest.mark.parametrize("path", DEPLOY, ids=lambda p: p.name)
def test_deploy_pods_are_restricted(path):
    for workload in workloads(path):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]


def test_the_sidecar_example_uses_a_native_sidecar_and_a_shared_process_namespace():
    workload = workloads(ROOT / "deploy" / "kubernetes" / "sidecar.yaml")[0]
    spec = pod_spec(workload)
    assert any(c.get("restartPolicy") == "Always" for c in spec["initContainers"])
    assert spec["shareProcessNamespace"] is True


def test_the_example_orders_its_programs_by_dependency_and_probes_their_readiness():
    """examples/kubernetes.yaml: the pod is Ready on pmd's readiness verdict (every boot
    program in its ready condition), a startup probe covers the slowest readiness, and the
    programs start in order by depends_on and readiness, never by a guessed delay."""
    path = ROOT / "examples" / "kubernetes.yaml"
    container = pmd_container(workloads(path)[0])
    # /readyz is GET /api/v1/daemon/ready's verdict for the kubelet (docs/orchestrators.md)
    assert container["readinessProbe"]["httpGet"]["path"] in ("/readyz", "/api/v1/daemon/ready")
    config = next(d for d in documents(path) if d["kind"] == "ConfigMap")
    specs = parse_programs(json.loads(config["data"]["programs.json"]))
    assert [s.delay_seconds for s in specs] == [0] * len(specs)
    ordered = [s for s in specs if s.depends_on]
    assert ordered, "no program of the example depends on another"
    by_name = {s.name: s for s in specs}
    for spec in ordered:
        for name in spec.depends_on:
            assert by_name[name].readiness is not None, (spec.name, name)
    startup = container["startupProbe"]
    longest_wait = max((s.readiness.timeout_seconds or 0) + s.startsecs
                       for s in specs if s.readiness is not None)
    assert startup["periodSeconds"] * startup["failureThreshold"] >= longest_wait
