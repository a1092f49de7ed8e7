"""The scheduled-deployment path end to end, minus Kubernetes: a real Prefect server on a loopback port, a `process`
work pool, deployments registered from a prefect.yaml with `prefect deploy`, a worker, and a deployment run that
completes through that worker.

`test_deployment_mechanics` does it with a trivial flow written here (fast); `test_smoke_pipeline_deployment` does
it with the project's prefect.yaml and real stages of the smoke pipeline (flows/pipeline.py), in a temporary copy of
the repo. The whole smoke DAG runs in tests/test_pipeline_e2e.py, under the same scheduler (flows.repro).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PREFECT = Path(sys.executable).with_name("prefect")
POOL = "latlab-process"
SERVER_START_TIMEOUT_S = 60
QUIET = {
    "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "PREFECT_CLI_PROMPT": "false",
    "PREFECT_SERVER_UI_ENABLED": "false",
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrefectStack:
    """A Prefect server and workers started as process groups of their own, so teardown ends exactly them."""

    def __init__(self, home: Path):
        self.home = home
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.env = {
            **os.environ,
            **QUIET,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
            # the flow's stages share 2 cores with the server and worker; a second torch thread per stage thrashes
            # (beside a 1-thread job it ran past the 900 s limit), as in tests/test_pipeline_e2e.py
            "OMP_NUM_THREADS": "1",
        }
        self.processes: list[subprocess.Popen] = []

    def spawn(self, args: list[str], cwd: Path, log_name: str) -> subprocess.Popen:
        log = open(self.home / log_name, "w")
        proc = subprocess.Popen(args, cwd=cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(proc)
        return proc

    def cli(self, *args: str, cwd: Path, timeout: float = 120) -> str:
        done = subprocess.run([str(PREFECT), *args], cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start_server(self) -> None:
        self.spawn([str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)], self.home, "server.log")
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"Prefect server not up in {SERVER_START_TIMEOUT_S}s:\n{self.log('server.log')}")

    def start_worker(self, cwd: Path) -> None:
        """A fresh worker in `cwd` (the previous one is stopped, so runs go to this one)."""
        for proc in self.processes[1:]:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:  # a loaded machine can keep a worker shutting down for longer
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=15)
        self.spawn([str(PREFECT), "worker", "start", "--pool", POOL, "--type", "process"], cwd, "worker.log")

    def log(self, name: str) -> str:
        path = self.home / name
        return path.read_text()[-4000:] if path.exists() else ""

    def run_deployment(self, name: str, parameters: dict, timeout_s: float) -> str:
        """Create a flow run of the deployment, wait for a final state, return the state's name."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api_url}):
            with get_client(sync_client=True) as client:
                deployment = client.read_deployment_by_name(name)
                flow_run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline:
                    state = client.read_flow_run(flow_run.id).state
                    if state is not None and state.is_final():
                        return state.name
                    time.sleep(1)
        raise AssertionError(f"{name}: no final state in {timeout_s}s\nworker log:\n{self.log('worker.log')}")

    def stop(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def prefect_stack(tmp_path_factory):
    if not PREFECT.exists():
        pytest.skip("the venv's prefect CLI is missing")
    stack = PrefectStack(tmp_path_factory.mktemp("prefect-home"))
    try:
        stack.start_server()
        stack.cli("work-pool", "create", POOL, "--type", "process", cwd=stack.home)
        yield stack
    finally:
        stack.stop()


HELLO_FLOW = '''
from pathlib import Path

from prefect import flow


@flow(name="hello-latlab")
def hello(out: str = "hello.txt", text: str = "hi") -> str:
    Path(out).write_text(text)
    return text
'''

HELLO_PREFECT_YAML = f"""
name: hello
prefect-version: 3.9.1
deployments:
  - name: hello
    entrypoint: flows/hello.py:hello
    work_pool:
      name: {POOL}
"""


def test_deployment_mechanics(prefect_stack, tmp_path):
    """prefect.yaml -> `prefect deploy` -> process worker -> completed run that wrote its file (< 90 s here)."""
    started = time.monotonic()
    project = tmp_path / "project"
    (project / "flows").mkdir(parents=True)
    (project / "flows" / "hello.py").write_text(textwrap.dedent(HELLO_FLOW))
    (project / "prefect.yaml").write_text(HELLO_PREFECT_YAML)

    prefect_stack.cli("--no-prompt", "deploy", "--name", "hello", cwd=project)
    prefect_stack.start_worker(project)
    marker = tmp_path / "ran.txt"
    state = prefect_stack.run_deployment("hello-latlab/hello", {"out": str(marker), "text": "from the worker"}, 80)
    assert state == "Completed", prefect_stack.log("worker.log")
    assert marker.read_text() == "from the worker"
    assert time.monotonic() - started < 90


def repo_copy(destination: Path, stub_pipeline: str | None = None) -> Path:
    """The working tree without outputs, caches and the venv, as a fresh git repo (DVC wants one)."""
    anywhere = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", ".pytest_cache")
    # outputs and local state at the top level only: src/latlab/data and src/latlab/models are code
    top_level = {ROOT: {"data", "models", "checkpoints", "mlruns", "mlartifacts", "mlflow.db", ".prefect"},
                 ROOT / ".dvc": {"cache", "tmp", "config.local"}}  # fmt: skip

    def ignore(folder: str, names: list[str]) -> set[str]:
        return set(anywhere(folder, names)) | (top_level.get(Path(folder), set()) & set(names))

    shutil.copytree(ROOT, destination, ignore=ignore)
    if stub_pipeline is not None:
        (destination / "flows" / "pipeline.py").write_text(stub_pipeline)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t.invalid"}  # fmt: skip
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "copy"]):
        subprocess.run(cmd, cwd=destination, env=env, check=True, capture_output=True)
    return destination


STUB_PIPELINE = '''
from pathlib import Path

from prefect import flow


@flow(name="latlab-pipeline-stub")
def latlab_pipeline(stages: list[str] | None = None, params_file: str = "params.yaml") -> None:
    Path("stub-ran.txt").write_text(f"{stages} {params_file}")


@flow(name="latlab-stage-stub")
def run_stage(stage: str) -> None:
    Path("stub-stage.txt").write_text(stage)
'''


def test_project_prefect_yaml_local_deployment_runs_through_the_worker(prefect_stack, tmp_path):
    """The project's prefect.yaml, with a stand-in for the pipeline flow: `pipeline-local` deploys from the repo and
    runs in the folder it was deployed from."""
    project = repo_copy(tmp_path / "latlab", stub_pipeline=STUB_PIPELINE)
    prefect_stack.cli("--no-prompt", "deploy", "--name", "pipeline-local", cwd=project)
    prefect_stack.start_worker(project)
    state = prefect_stack.run_deployment("latlab-pipeline-stub/pipeline-local", {"stages": ["generate"]}, 80)
    assert state == "Completed", prefect_stack.log("worker.log")
    assert (project / "stub-ran.txt").read_text() == "['generate'] params.yaml"


SMOKE_PROFILE = os.environ.get("LATLAB_SMOKE_PROFILE", "profiles/smoke.yaml")
SMOKE_TIMEOUT_S = float(os.environ.get("LATLAB_SMOKE_DEPLOYMENT_TIMEOUT_S", "900"))


# The Spawrious track: a foreach group (its items two at a time, as Prefect tasks in the runner's threads) between
# two single stages, ~25 s of stage work. The whole smoke DAG through the worker took 337-368 s of CI for nothing
# test_pipeline_e2e does not show: there flows.repro schedules the same DAG, and test_flow wraps stages in tasks.
DEPLOYED_STAGES = ["spawrious_generate", "spawrious_train", "spawrious_evaluate"]


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "flows" / "pipeline.py").exists(), reason="flows/pipeline.py (the pipeline flow) does not exist yet")
def test_smoke_pipeline_deployment(prefect_stack, tmp_path):
    """The project's prefect.yaml `pipeline-local` deployment runs stages of the smoke pipeline to completion via the
    worker, and only those: DVC then finds them up to date and the other tracks never run."""
    project = repo_copy(tmp_path / "latlab")
    # The stages read params.yaml: the smoke profile is merged into it, as `make`/the README do.
    subprocess.run([sys.executable, "-m", "latlab.profiles", "apply", SMOKE_PROFILE], cwd=project, check=True)
    prefect_stack.cli("--no-prompt", "deploy", "--name", "pipeline-local", cwd=project, timeout=300)
    prefect_stack.start_worker(project)
    flow_name = _flow_name_of(prefect_stack, "pipeline-local", project)
    state = prefect_stack.run_deployment(f"{flow_name}/pipeline-local", {"stages": DEPLOYED_STAGES}, SMOKE_TIMEOUT_S)
    assert state == "Completed", prefect_stack.log("worker.log")
    status = subprocess.run([str(PREFECT.with_name("dvc")), "status", "spawrious_evaluate"], cwd=project, env=prefect_stack.env,
                            capture_output=True, text=True, timeout=120)
    # every selected stage (and its upstream: the params check) ran to the end and was recorded in dvc.lock
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    trained = sorted(p.parent.name for p in (project / "models/spawrious").glob("*/*/model.safetensors"))
    assert trained == ["dfr", "erm", "groupdro"], trained  # the smoke profile's three methods on its one split
    assert not (project / "models/base").exists()  # a stage not selected did not run


def _flow_name_of(stack: PrefectStack, deployment_name: str, project: Path) -> str:
    """Flow name of the deployment registered from `project` (other tests deploy the same name for other flows)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        with get_client(sync_client=True) as client:
            deployments = client.read_deployments(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name]))
            )
            (deployment,) = [d for d in deployments if str(project) in json.dumps(d.pull_steps)]
            return client.read_flow(deployment.flow_id).name


CLUSTER_DVC_YAML = f"""
stages:
  generate:
    cmd: {sys.executable} -c "import pathlib; pathlib.Path('a.txt').write_text('alpha')"
    outs: [a.txt]
  train:
    cmd: {sys.executable} -c "import pathlib; pathlib.Path('b.txt').write_text(pathlib.Path('a.txt').read_text().upper())"
    deps: [a.txt]
    outs: [b.txt]
"""

STAGE_POD_PREFECT_YAML = f"""
name: stage-pods
prefect-version: 3.9.1
deployments:
  - {{name: stage-gpu, entrypoint: "flows/cluster.py:cluster_stage", work_pool: {{name: {POOL}}}}}
  - {{name: stage-cpu, entrypoint: "flows/cluster.py:cluster_stage", work_pool: {{name: {POOL}}}}}
"""


def test_cluster_pipeline_hands_a_stage_to_another_workspace_through_the_remote(prefect_stack, tmp_path, monkeypatch):
    """flows/cluster.py end to end with a process pool standing in for Kubernetes: `generate` runs inline in the
    orchestrator's workspace, `train` (a GPU stage) as a deployment run in a second workspace that shares only the
    DVC remote and the lock entries with it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cluster import cluster_pipeline, read_lock

    remote = tmp_path / "remote"
    remote.mkdir()
    workspaces = {}
    for name in ("orchestrator", "stage_pod"):
        workspace = tmp_path / name
        (workspace / "flows").mkdir(parents=True)
        for module in ("cluster.py", "dag.py", "proc.py"):  # the stage graph from dag.py, dvc runs via proc.py
            shutil.copy(ROOT / "flows" / module, workspace / "flows" / module)
        (workspace / "dvc.yaml").write_text(CLUSTER_DVC_YAML)
        subprocess.run([str(PREFECT.with_name("dvc")), "init", "--no-scm", "-q"], cwd=workspace, env=prefect_stack.env, check=True)
        workspaces[name] = workspace
    (workspaces["stage_pod"] / "prefect.yaml").write_text(STAGE_POD_PREFECT_YAML)

    prefect_stack.env["LATLAB_DVC_REMOTE_URL"] = str(remote)  # the work pool's env in a real cluster
    prefect_stack.cli("--no-prompt", "deploy", "--all", cwd=workspaces["stage_pod"])
    prefect_stack.start_worker(workspaces["stage_pod"])

    monkeypatch.setenv("LATLAB_DVC_REMOTE_URL", str(remote))
    monkeypatch.chdir(workspaces["orchestrator"])
    try:
        with temporary_settings({PREFECT_API_URL: prefect_stack.api_url}):
            lock = cluster_pipeline(stage_timeout_s=80)
    finally:
        prefect_stack.env.pop("LATLAB_DVC_REMOTE_URL")

    assert set(lock["stages"]) == {"generate", "train"}
    assert lock["stages"]["train"]["deps"][0]["md5"] == lock["stages"]["generate"]["outs"][0]["md5"]
    assert (workspaces["stage_pod"] / "b.txt").read_text() == "ALPHA"
    assert not (workspaces["orchestrator"] / "b.txt").exists()  # produced in the other workspace only
    assert read_lock(workspaces["orchestrator"]) == lock
    # the orchestrator's workspace can now fetch what the stage pod pushed
    dvc = str(PREFECT.with_name("dvc"))
    subprocess.run([dvc, "pull", "train"], cwd=workspaces["orchestrator"], env=prefect_stack.env, check=True, capture_output=True)
    assert (workspaces["orchestrator"] / "b.txt").read_text() == "ALPHA"
