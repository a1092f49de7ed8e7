"""Offline checks of the cluster side: every manifest in k8s/ (and every rendered kustomize overlay) is valid for
Kubernetes 1.33 (strict schema), the work-pool template is the prefect-kubernetes default plus latlab's variables,
every template variable is used, and a GPU deployment's Job, rendered the way the worker renders it, carries the GPU
limit, tolerations, node selector and env. Also keeps prefect.yaml consistent with flows/cluster.py.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
TEMPLATE = K8S / "work-pool" / "base-job-template.json"
KUBE_VERSION = "1.33.0"
KUSTOMIZE_CONFIG_KINDS = {"Kustomization", "Component"}
LATLAB_VARIABLES = {
    "gpu_count", "node_selector", "tolerations", "shm_size", "hf_cache_pvc",
    "mlflow_tracking_uri", "dvc_remote_url", "dvc_remote_endpoint", "dvc_remote_secret",
}  # fmt: skip


def manifest_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def validate_strict(resource: dict) -> None:
    kubernetes_validate.validate(resource, KUBE_VERSION, strict=True)


MANIFEST_FILES = sorted(
    p for p in K8S.rglob("*.yaml") if not any(d.get("kind") in KUSTOMIZE_CONFIG_KINDS for d in manifest_documents(p))
)


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_file_validates_strict(path):
    docs = manifest_documents(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        validate_strict(doc)


def test_strict_validation_catches_a_misplaced_field():
    """The default prefect-kubernetes template nests `completions` in the pod spec; strict validation must object
    (which is why our template moved it to the Job spec)."""
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "x"},
        "spec": {"template": {"spec": {"completions": 1, "restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}},
    }  # fmt: skip
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_strict(job)


def kustomize_build(overlay: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with built-in kustomize) not installed: overlays not rendered")
    out = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_rendered_overlay_validates_strict_and_is_hardened(overlay):
    docs = kustomize_build(K8S / "overlays" / overlay)
    kinds = {(d["kind"], d["metadata"]["name"].rsplit("-", 1)[0] if d["kind"] == "ConfigMap" else d["metadata"]["name"]) for d in docs}
    for expected in [
        ("Namespace", "latlab"), ("StatefulSet", "postgres"), ("Deployment", "minio"), ("Job", "minio-buckets"),
        ("Deployment", "mlflow"), ("Deployment", "prefect-server"), ("Deployment", "prefect-worker"),
        ("ServiceAccount", "prefect-worker"), ("Role", "prefect-worker"), ("RoleBinding", "prefect-worker"),
        ("ConfigMap", "latlab-work-pool"), ("PersistentVolumeClaim", "latlab-hf-cache"),
        ("NetworkPolicy", "default-deny-ingress"),
    ]:  # fmt: skip
        assert expected in kinds, f"{overlay}: {expected} missing"
    for doc in docs:
        validate_strict(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "latlab", doc["metadata"]["name"]
        pod = pod_spec(doc)
        if pod is None:
            continue
        assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        for container in pod["containers"]:
            where = f"{doc['metadata']['name']}/{container['name']}"
            assert {"requests", "limits"} <= set(container["resources"]), where
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], where
            for env in container.get("env", []):
                # secrets are referenced, never inlined
                assert not re.search(r"PASSWORD|SECRET|KEY_ID", env["name"]) or "valueFrom" in env, where
    worker_cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("latlab-work-pool"))
    assert json.loads(worker_cm["data"]["base-job-template.json"]) == json.loads(TEMPLATE.read_text())


def pod_spec(doc: dict) -> dict | None:
    if doc["kind"] in {"Deployment", "StatefulSet", "Job"}:
        return doc["spec"]["template"]["spec"]
    return None


def test_worker_role_covers_what_the_kubernetes_worker_does():
    docs = manifest_documents(K8S / "base" / "prefect-worker.yaml")
    role = next(d for d in docs if d["kind"] == "Role")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    for need in [("batch", "jobs", "create"), ("batch", "jobs", "watch"), ("batch", "jobs", "delete"),
                 ("", "pods", "list"), ("", "pods/log", "get"), ("", "events", "watch")]:  # fmt: skip
        assert need in granted, need
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert binding["subjects"][0]["name"] == deployment["spec"]["template"]["spec"]["serviceAccountName"]


def test_mlflow_allows_its_service_host_names():
    doc = manifest_documents(K8S / "base" / "mlflow.yaml")[1]
    args = doc["spec"]["template"]["spec"]["containers"][0]["args"]
    hosts = next(a.split("=", 1)[1] for a in args if a.startswith("--allowed-hosts=")).split(",")
    for host in ["mlflow:5000", "mlflow.latlab.svc.cluster.local:5000", "localhost:*"]:
        assert host in hosts


# ---------------------------------------------------------------- work-pool base job template


def load_template() -> dict:
    return json.loads(TEMPLATE.read_text())


def placeholders(value) -> set[str]:
    return set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", json.dumps(value)))


def test_template_is_derived_from_the_prefect_kubernetes_default():
    from prefect_kubernetes.worker import KubernetesWorker

    default = KubernetesWorker.get_default_base_job_template()
    ours = load_template()
    assert set(default["variables"]["properties"]) <= set(ours["variables"]["properties"])
    assert set(default["job_configuration"]) == set(ours["job_configuration"])
    assert LATLAB_VARIABLES <= set(ours["variables"]["properties"])


def test_every_template_variable_is_referenced_and_every_reference_declared():
    template = load_template()
    declared = set(template["variables"]["properties"])
    used = placeholders(template["job_configuration"])
    assert declared - used == set(), f"declared but unused: {sorted(declared - used)}"
    assert used - declared == set(), f"used but undeclared: {sorted(used - declared)}"


def prefect_deployments() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}


def resolved(value):
    return value() if callable(value) else value


async def _maybe_await(value):
    return await value if inspect.isawaitable(value) else value


def render_job(job_variables: dict) -> dict:
    """The Job manifest the worker would submit for a flow run of a deployment with these job variables."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    async def build():
        config = await _maybe_await(
            KubernetesWorkerJobConfiguration.from_template_and_values(load_template(), job_variables)
        )
        flow_run = FlowRun(id=uuid.uuid4(), name="brave-otter", flow_id=uuid.uuid4())
        config.prepare_for_flow_run(flow_run)
        return config.job_manifest

    # A pool template has no block or variable references to resolve, so no API is needed: point the client at a
    # closed port rather than let Prefect start a temporary server (~20 s); a real call would fail loudly.
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        return asyncio.run(build())


def test_gpu_deployment_job_manifest_validates_and_carries_gpu_settings():
    deployment = prefect_deployments()["stage-lat"]
    job_variables = deployment["work_pool"]["job_variables"]
    manifest = render_job({**job_variables, "env": {"LATLAB_EXTRA": "1"}})
    validate_strict(manifest)

    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["memory"] == job_variables["memory_request"]
    assert container["image"] == job_variables["image"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["LATLAB_DVC_REMOTE_URL"] == "s3://dvc"
    assert env["HF_HOME"] == "/cache/huggingface"
    assert env["LATLAB_EXTRA"] == "1"  # the deployment's own env survives next to the pool's
    assert "PREFECT__FLOW_RUN_ID" in env  # and so does the worker's
    assert container["envFrom"] == [{"secretRef": {"name": "latlab-dvc-remote"}}]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["latlab-hf-cache"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert manifest["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "flow-run"
    assert manifest["metadata"]["namespace"] == "latlab"


def test_cpu_deployment_job_manifest_asks_for_no_gpu():
    job_variables = prefect_deployments()["stage-evaluate"]["work_pool"]["job_variables"]
    manifest = render_job(job_variables)
    validate_strict(manifest)
    pod = manifest["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 0
    assert pod["nodeSelector"] == {} and pod["tolerations"] == []


def test_job_variables_in_prefect_yaml_are_declared_by_the_template():
    declared = set(load_template()["variables"]["properties"])
    for name, deployment in prefect_deployments().items():
        extra = set(deployment["work_pool"].get("job_variables", {})) - declared
        assert not extra, f"{name}: job variables {sorted(extra)} unknown to the work pool"


def test_stage_deployments_match_the_gpu_classification():
    from flows.cluster import FALLBACK_DEPLOYMENTS, STAGE_FLOW_NAME, is_gpu_stage

    deployments = prefect_deployments()
    stage_deployments = {n: d for n, d in deployments.items() if d["entrypoint"].endswith(f":{STAGE_FLOW_NAME.replace('-', '_')}")}
    assert set(FALLBACK_DEPLOYMENTS.values()) <= set(stage_deployments)
    for name, deployment in stage_deployments.items():
        stage = deployment.get("parameters", {}).get("stage")
        wants_gpu = name == FALLBACK_DEPLOYMENTS[True] if stage is None else is_gpu_stage(stage)
        assert (deployment["work_pool"]["job_variables"].get("gpu_count", 0) > 0) == wants_gpu, name
        if stage is not None:
            assert name == f"stage-{stage.replace('_', '-')}"
    for cpu_stage in ["generate", "validate", "evaluate", "compare"]:
        assert not is_gpu_stage(cpu_stage)
    for gpu_stage in ["base", "refusal", "lat", "lat_untargeted", "rt_eat", "r2d2"]:
        assert is_gpu_stage(gpu_stage)


def test_nightly_deployment_is_scheduled():
    nightly = prefect_deployments()["nightly"]
    from prefect.client.schemas.schedules import CronSchedule

    schedule = CronSchedule(**nightly["schedules"][0])
    assert schedule.cron == "0 2 * * *"
    assert nightly["entrypoint"] == "flows/cluster.py:cluster_pipeline"


def test_dockerfile_installs_the_pinned_environment_in_the_makefile_order():
    dockerfile = (ROOT / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    torch_pin = re.search(r'"(torch==[^"]+)"', pyproject).group(1)
    steps = [
        f"pip install {torch_pin} --index-url https://download.pytorch.org/whl/${{TORCH_VARIANT}}",
        "pip install -r requirements.lock",
        "pip install --no-deps -e .",
    ]
    positions = [dockerfile.find(step) for step in steps]
    assert -1 not in positions, dict(zip(steps, positions))
    assert positions == sorted(positions)
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "data", "models", ".dvc/cache", "k8s/secrets.env"} <= ignored
