"""Cluster mode of the latlab pipeline: each GPU stage runs as its own Prefect deployment run, i.e. its own
Kubernetes pod on a GPU node, and stages hand their outputs to one another through the DVC remote.

Pods share no disk. A stage pod therefore (1) receives the pipeline's current `dvc.lock` as a parameter,
(2) `dvc pull`s the outputs of the stages it depends on, (3) runs `dvc repro --single-item <stage>`, (4) `dvc push`es
its outputs, and (5) hands its new `dvc.lock` entry back to the orchestrating flow as a Prefect artifact (the
orchestrator merges it and passes the merged lock to the next stages). MLflow is the cluster server: the work pool
sets MLFLOW_TRACKING_URI in every pod and `latlab.tracking` prefers it to params.yaml.

Local mode is untouched: `flows/pipeline.py` runs the DAG in one process on the ephemeral API. This module only
knows stage names, DVC and Prefect (the orchestration layer); of the library it uses the params check, profiles and
the offline environment, never the science. Params (with a profile, a sweep point's overrides) are checked
(`latlab.check`) before any stage runs, in one line per problem.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.dag import clear_stage_checkpoints, execution_waves, stage_parents
from flows.proc import run_passing_sigterm
from latlab.env import interpreter_env

# Stages that need no accelerator; every other stage (training, attacks, unlearning evaluation) is sent to a GPU
# pod, so a stage added to dvc.yaml later lands on a GPU unless it is listed here.
CPU_STAGES = frozenset({"check", "generate", "validate", "evaluate", "compare"})
STAGE_FLOW_NAME = "cluster-stage"
# Per-stage deployments (`stage-<name>` in prefect.yaml) win; these catch stages that have none.
FALLBACK_DEPLOYMENTS = {True: "stage-gpu", False: "stage-cpu"}
LOCK_ARTIFACT_PREFIX = "dvc-lock-entry"
_LOCK_JSON = re.compile(r"```json\n(.*)\n```", re.DOTALL)


def is_gpu_stage(stage: str) -> bool:
    # foreach/matrix stages are named "<stage>@<item>" in dvc.lock; classify by the stage they come from
    return stage.split("@", 1)[0] not in CPU_STAGES


def dvc_command(args: Iterable[str], cwd: Path) -> str:
    env = interpreter_env({**os.environ, "DVC_NO_ANALYTICS": "1"})
    # a pod's SIGTERM reaches the stage under dvc, which checkpoints and ends its MLflow run KILLED (flows/proc.py)
    done = run_passing_sigterm(["dvc", *args], cwd=cwd, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed ({done.returncode}) in {cwd}:\n{done.stdout}{done.stderr}")
    return done.stdout


def configure_remote(cwd: Path) -> None:
    """Point DVC at the cluster remote named by the work pool's env; workspace-local, so nothing is committed."""
    if not (cwd / ".git").exists():
        # The image carries the code without .git (see .dockerignore); DVC then runs without an SCM.
        dvc_command(["config", "--local", "core.no_scm", "true"], cwd)
    url = os.environ.get("LATLAB_DVC_REMOTE_URL")
    if not url:
        return
    dvc_command(["remote", "add", "--local", "--default", "--force", "cluster", url], cwd)
    endpoint = os.environ.get("LATLAB_DVC_REMOTE_ENDPOINT")
    if endpoint:
        dvc_command(["remote", "modify", "--local", "cluster", "endpointurl", endpoint], cwd)


def read_lock(cwd: Path) -> dict[str, Any]:
    path = cwd / "dvc.lock"
    if not path.exists():
        return {"schema": "2.0", "stages": {}}
    return yaml.safe_load(path.read_text()) or {"schema": "2.0", "stages": {}}


def write_lock(cwd: Path, lock: dict[str, Any]) -> None:
    (cwd / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))


def apply_overrides(cwd: Path, overrides: dict[str, Any]) -> None:
    """params.yaml with dotted-key overrides (a sweep point), validated first: a bad key changes nothing and fails
    in one line naming it (latlab.config.ConfigError)."""
    from latlab.config import parse_params
    from latlab.profiles import with_overrides

    path = cwd / "params.yaml"
    params = with_overrides(yaml.safe_load(path.read_text()) or {}, overrides)
    parse_params(params, f"{path} + overrides {json.dumps(overrides, sort_keys=True)}")
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def params_problems(cwd: Path, points: list[dict[str, Any]] | None = None) -> list[str]:
    """The params check (latlab.check) of this workspace's params.yaml, or of each sweep point applied to it: one
    line per problem, found here before any pod starts. A DVC repo without params.yaml has none to check."""
    from latlab.check import check

    if not (cwd / "params.yaml").exists():
        return []
    return [line for point in (points or [None]) for line in check(cwd / "params.yaml", overrides=point)]


def use_profile(cwd: Path, profile: str | None) -> None:
    """Merge a profile (profiles/<name>.yaml) into this workspace's params.yaml, as `python -m latlab.profiles
    apply` does; every pod of a run applies the same profile to the params.yaml of its image."""
    if profile:
        from latlab.profiles import apply_profile

        apply_profile(cwd / profile, cwd / "params.yaml")


def execute_stage(
    stage: str,
    cwd: Path,
    lock: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    push: bool = True,
    profile: str | None = None,
) -> dict[str, Any]:
    """Pull the stage's inputs, reproduce it alone, push its outputs; return its new dvc.lock entry."""
    configure_remote(cwd)
    use_profile(cwd, profile)
    if lock is not None:
        write_lock(cwd, lock)
    parents = stage_parents(cwd).get(stage)
    if parents is None:
        raise ValueError(f"no stage {stage!r} in {cwd / 'dvc.yaml'}")
    # The stage's own outputs too: when they are already in the remote for these inputs, repro has nothing to do.
    dvc_command(["pull", "--allow-missing", *parents, stage], cwd)
    if overrides:
        apply_overrides(cwd, overrides)
    problems = params_problems(cwd)
    if problems:
        raise ValueError("\n".join(problems))
    dvc_command(["repro", "--single-item", stage], cwd)
    clear_stage_checkpoints(cwd, [stage])
    if push:
        dvc_command(["push", stage], cwd)
    return read_lock(cwd)["stages"][stage]


def lock_entry_markdown(stage: str, entry: dict[str, Any]) -> str:
    return f"dvc.lock entry of stage `{stage}`\n\n```json\n{json.dumps(entry, indent=1)}\n```"


def lock_entry_from_markdown(markdown: str) -> dict[str, Any]:
    match = _LOCK_JSON.search(markdown)
    if match is None:
        raise ValueError("artifact holds no dvc.lock entry")
    return json.loads(match.group(1))


@flow(name=STAGE_FLOW_NAME, log_prints=True)
def cluster_stage(
    stage: str,
    lock: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    push: bool = True,
    profile: str | None = None,
) -> dict[str, Any]:
    """One DVC stage in this pod. `lock`: the orchestrator's dvc.lock (None: the one baked into the image)."""
    logger = get_run_logger()
    logger.info("stage %s, MLflow at %s", stage, os.environ.get("MLFLOW_TRACKING_URI", "<params.yaml tracking.uri>"))
    entry = execute_stage(stage, Path.cwd(), lock, overrides, push, profile)
    create_markdown_artifact(
        markdown=lock_entry_markdown(stage, entry), key=f"{LOCK_ARTIFACT_PREFIX}-{_artifact_key(stage)}"
    )
    return entry


def _artifact_key(stage: str) -> str:
    # artifact keys allow lowercase letters, digits and dashes only
    return re.sub(r"[^a-z0-9-]+", "-", stage.lower())


def stage_deployment(stage: str, use_gpu: bool = True) -> str:
    """`flow/deployment` name for a stage: its own deployment if registered, else the GPU or CPU fallback.

    Without GPUs (`use_gpu=False`, e.g. a kind cluster) every stage goes to the CPU fallback.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    if not use_gpu:
        return f"{STAGE_FLOW_NAME}/{FALLBACK_DEPLOYMENTS[False]}"
    own = f"{STAGE_FLOW_NAME}/stage-{_artifact_key(stage)}"
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(own)
            return own
        except ObjectNotFound:
            return f"{STAGE_FLOW_NAME}/{FALLBACK_DEPLOYMENTS[is_gpu_stage(stage)]}"


def lock_entry_of_run(flow_run_id) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    for artifact in artifacts:
        if artifact.key and artifact.key.startswith(LOCK_ARTIFACT_PREFIX):
            return lock_entry_from_markdown(str(artifact.data))
    raise RuntimeError(f"flow run {flow_run_id} published no dvc.lock entry")


@task(name="stage-pod", retries=1, retry_delay_seconds=60)
def run_stage_pod(
    stage: str,
    lock: dict[str, Any] | None,
    overrides: dict[str, Any] | None = None,
    push: bool = True,
    timeout_s: float | None = None,
    profile: str | None = None,
    use_gpu: bool = True,
) -> dict[str, Any]:
    """Run one stage as a deployment run (its own pod) and wait for it; return its dvc.lock entry."""
    from prefect.deployments import run_deployment

    name = stage_deployment(stage, use_gpu)
    flow_run = run_deployment(
        name,
        parameters={"stage": stage, "lock": lock, "overrides": overrides, "push": push, "profile": profile},
        timeout=timeout_s,
        poll_interval=2,
        flow_run_name=f"{stage}" + (f" {json.dumps(overrides, sort_keys=True)}" if overrides else ""),
    )
    if flow_run.state is None or not flow_run.state.is_completed():
        state = flow_run.state.name if flow_run.state else "no state"
        raise RuntimeError(f"stage {stage}: deployment run {flow_run.id} ({name}) ended {state}")
    return lock_entry_of_run(flow_run.id)


@flow(name="cluster-pipeline", log_prints=True)
def cluster_pipeline(
    stages: list[str] | None = None,
    profile: str | None = None,
    use_gpu: bool = True,
    inline_cpu_stages: bool = True,
    stage_timeout_s: float | None = None,
) -> dict[str, Any]:
    """The DVC pipeline on a cluster: GPU stages in their own pods, a wave's stages in parallel.

    `profile`: a params profile (profiles/<name>.yaml) every pod applies to its params.yaml. `use_gpu=False` sends the
    "GPU" stages to CPU pods (a cluster without GPUs). CPU stages run in this orchestrator pod when
    `inline_cpu_stages`, else in `stage-cpu` pods. Returns the resulting dvc.lock, also published as the
    `latlab-dvc-lock` artifact so that it can be committed.
    """
    logger = get_run_logger()
    cwd = Path.cwd()
    use_profile(cwd, profile)
    problems = params_problems(cwd)
    if problems:
        raise ValueError("\n".join(problems))
    lock = read_lock(cwd)
    lock.setdefault("stages", {})
    waves = execution_waves(stage_parents(cwd), stages)
    logger.info("waves: %s", waves)
    for wave in waves:
        pods = {
            stage: run_stage_pod.submit(
                stage, lock, timeout_s=stage_timeout_s, profile=profile, use_gpu=use_gpu
            )
            for stage in wave
            if is_gpu_stage(stage) or not inline_cpu_stages
        }
        # Inline stages one after another: DVC holds a lock on this workspace while it runs.
        entries = {stage: execute_stage(stage, cwd, lock) for stage in wave if stage not in pods}
        entries.update({stage: future.result() for stage, future in pods.items()})
        lock["stages"].update(entries)
        write_lock(cwd, lock)
    create_markdown_artifact(
        markdown=f"dvc.lock after the cluster run\n\n```yaml\n{yaml.safe_dump(lock, sort_keys=False)}```",
        key="latlab-dvc-lock",
    )
    return lock


def sweep_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of a {dotted params key: values} grid, one override dict per point."""
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


@flow(name="lat-sweep", log_prints=True)
def lat_sweep(
    grid: dict[str, list[Any]],
    stage: str = "lat",
    max_parallel: int = 4,
    stage_timeout_s: float | None = None,
) -> list[dict[str, Any]]:
    """A hyperparameter sweep of one stage, one pod per grid point; results are compared in MLflow.

    Inputs come from the DVC remote as recorded in the image's dvc.lock; sweep outputs are not pushed, so the
    pipeline's own lineage is untouched. Returns the points that ran.
    """
    points = sweep_points(grid)
    problems = params_problems(Path.cwd(), points)  # a misspelled key fails here, not in every pod
    if problems:
        raise ValueError("\n".join(sorted(set(problems))))
    for start in range(0, len(points), max_parallel):
        batch = points[start : start + max_parallel]
        futures = [run_stage_pod.submit(stage, None, point, False, stage_timeout_s) for point in batch]
        for future in futures:
            future.result()
    return points


if __name__ == "__main__":
    cluster_pipeline()
