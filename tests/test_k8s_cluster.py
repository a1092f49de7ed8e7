"""On a real cluster (only with a kubeconfig): apply the kustomize overlay, wait for the stack, register the
deployments from prefect.yaml against the cluster's Prefect server, and run the `smoke` deployment (the smoke
profile through the cluster path: orchestrator pod, stage pods, DVC remote on MinIO, MLflow server) to completion.

Prerequisites (docs/kubernetes.md): the Secrets created, the images built and loaded (kind) or pushed.
Knobs: LATLAB_K8S_OVERLAY (cpu), LATLAB_K8S_TIMEOUT_S (1800).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_prefect_deployment import PrefectStack, free_port

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "latlab"
OVERLAY = os.environ.get("LATLAB_K8S_OVERLAY", "cpu")
TIMEOUT_S = float(os.environ.get("LATLAB_K8S_TIMEOUT_S", "1800"))
KUBECONFIG = Path(os.environ.get("KUBECONFIG", Path.home() / ".kube" / "config"))
KUBECTL = shutil.which("kubectl")

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(KUBECTL is None or not KUBECONFIG.exists(), reason="needs kubectl and a kubeconfig"),
]


def kubectl(*args: str, timeout: float = 300) -> str:
    done = subprocess.run([KUBECTL, *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"kubectl {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def cluster_stack(tmp_path_factory):
    reachable = subprocess.run([KUBECTL, "version", "--request-timeout=10s"], capture_output=True, timeout=30)
    if reachable.returncode != 0:
        pytest.skip("the kubeconfig's cluster does not answer")
    kubectl("apply", "-f", str(ROOT / "k8s" / "base" / "namespace.yaml"))
    for secret in ("latlab-postgres", "latlab-minio", "latlab-dvc-remote"):
        got = subprocess.run([KUBECTL, "-n", NAMESPACE, "get", "secret", secret], capture_output=True, timeout=30)
        assert got.returncode == 0, f"Secret {secret} missing: create it from k8s/secrets.example.env (docs/kubernetes.md)"
    kubectl("apply", "-k", str(ROOT / "k8s" / "overlays" / OVERLAY))
    for workload in ("statefulset/postgres", "deployment/minio", "deployment/mlflow", "deployment/prefect-server",
                     "deployment/prefect-worker"):  # fmt: skip
        kubectl("-n", NAMESPACE, "rollout", "status", workload, "--timeout=600s", timeout=660)
    kubectl("-n", NAMESPACE, "wait", "--for=condition=complete", "job/minio-buckets", "--timeout=300s", timeout=360)

    port = free_port()
    forward = subprocess.Popen(
        [KUBECTL, "-n", NAMESPACE, "port-forward", "svc/prefect-server", f"{port}:4200"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    stack = PrefectStack(tmp_path_factory.mktemp("prefect-client"))
    stack.port, stack.api_url = port, f"http://127.0.0.1:{port}/api"
    stack.env["PREFECT_API_URL"] = stack.api_url
    stack.processes.append(forward)
    try:
        _wait_for_work_pool(stack, "latlab-k8s", timeout_s=300)
        yield stack
    finally:
        stack.stop()


def _wait_for_work_pool(stack: PrefectStack, pool: str, timeout_s: float) -> None:
    """The worker creates the pool (with k8s/work-pool/base-job-template.json) when it first starts."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = subprocess.run(
            [str(Path(sys.executable).with_name("prefect")), "work-pool", "inspect", pool],
            env=stack.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if done.returncode == 0:
            return
        time.sleep(5)
    raise AssertionError(f"work pool {pool} not created by the worker in {timeout_s}s")


def test_smoke_deployment_runs_on_the_cluster(cluster_stack):
    for name in ("smoke", "stage-cpu", "stage-gpu"):
        cluster_stack.cli("--no-prompt", "deploy", "--name", name, cwd=ROOT, timeout=300)
    state = cluster_stack.run_deployment("cluster-pipeline/smoke", {}, TIMEOUT_S)
    assert state == "Completed", kubectl("-n", NAMESPACE, "get", "jobs,pods", "-o", "wide")
