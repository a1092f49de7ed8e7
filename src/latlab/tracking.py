"""The only module that talks to MLflow: one run per stage execution, metrics, artifacts, registered models.

Local default: a SQLite tracking store + registry and an artifact folder inside the project. `MLFLOW_TRACKING_URI`
in the environment (the cluster's server) replaces the params value.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from latlab.config import TrackingConfig

MODEL_CARD = "latlab_model.json"  # written beside saved weights: which registered version they are
_METRIC_NAME = re.compile(r"[^\w.\- :/]")  # characters MLflow refuses in metric names


def tracking_uri(cfg: TrackingConfig) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri


def _mlflow(cfg: TrackingConfig):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    return mlflow


def path_digest(path: Path) -> str:
    """md5 of a file, or of a directory's sorted (relative path, file md5) list, like DVC's .dir hash in spirit."""
    if path.is_file():
        return hashlib.md5(path.read_bytes()).hexdigest()
    digest = hashlib.md5()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(child.relative_to(path)).encode())
        digest.update(hashlib.md5(child.read_bytes()).hexdigest().encode())
    return digest.hexdigest()


def stage_dependencies(stage: str, dvc_yaml: Path = Path("dvc.yaml")) -> list[str]:
    if not dvc_yaml.exists():
        return []
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})
    base, _, item = stage.partition("@")  # a foreach/matrix stage `name@item` shares its template's deps
    spec = stages.get(base, {})
    deps = spec.get("do", spec).get("deps", []) if item else spec.get("deps", [])
    return [dep.replace("${key}", item).replace("${item}", item) for dep in deps if isinstance(dep, str)]


def git_commit() -> str:
    """HEAD of the work tree; in images without .git, the commit the image was built from (LATLAB_GIT_COMMIT)."""
    if os.environ.get("LATLAB_GIT_COMMIT"):
        return os.environ["LATLAB_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _model_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("torch", "transformers", "tokenizers", "safetensors", "accelerate")]


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, sub in value.items():
            flat.update(_flatten(f"{prefix}.{key}" if prefix else str(key), sub))
        return flat
    return {prefix: value}


class StageRun:
    """Handle on the active MLflow run of one stage execution."""

    def __init__(self, mlflow, cfg: TrackingConfig, stage: str, run):
        self.mlflow = mlflow
        self.cfg = cfg
        self.stage = stage
        self.run = run

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {_METRIC_NAME.sub("_", k): float(v) for k, v in _flatten("", metrics).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if clean:
            self.mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.mlflow.log_artifacts(str(path), artifact_path=artifact_path or path.name)
        elif path.exists():
            self.mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_model(self, model, tokenizer, role: str, out_dir: Path, tags: dict[str, str] | None = None) -> dict:
        """Log a HF model (transformers flavor, safetensors) and register it as `latlab-<role>`.

        Writes `out_dir/latlab_model.json` so later stages know which registered version the weights are.
        """
        name = "latlab-" + role.replace("/", "-")
        card: dict[str, Any] = {"role": role, "registered_name": name, "run_id": self.run_id, "version": None,
                                "tags": tags or {}}
        if self.cfg.log_models:
            info = self.mlflow.transformers.log_model(
                transformers_model={"model": model, "tokenizer": tokenizer}, name="model",
                task="text-generation", registered_model_name=name, save_pretrained=True,
                # explicit requirements: MLflow's inference imports torchvision, which this stack does not ship
                pip_requirements=_model_requirements())
            version = str(info.registered_model_version)
            client = self.mlflow.MlflowClient()
            for key, value in {**(tags or {}), "stage": self.stage, "role": role}.items():
                client.set_model_version_tag(name, version, key, str(value))
            card["version"] = version
        (out_dir / MODEL_CARD).write_text(json.dumps(card, indent=2))
        return card


    def register_torch_model(self, model, name: str, input_example, tags: dict[str, str] | None = None) -> str | None:
        """Log a plain torch module (mlflow.pytorch flavor, needs an input example) and register it as `name`."""
        if not self.cfg.log_models:
            return None
        from importlib.metadata import version

        info = self.mlflow.pytorch.log_model(model, name="model", registered_model_name=name,
                                             input_example=input_example,
                                             pip_requirements=[f"torch=={version('torch')}"])
        version_id = str(info.registered_model_version)
        client = self.mlflow.MlflowClient()
        for key, value in {**(tags or {}), "stage": self.stage}.items():
            client.set_model_version_tag(name, version_id, key, str(value))
        return version_id


@contextmanager
def stage_run(cfg: TrackingConfig, stage: str, params: dict[str, Any] | None = None,
              extra_tags: dict[str, str] | None = None) -> Iterator[StageRun]:
    """Open an MLflow run for one stage execution with params, commit, DVC stage and dependency hashes as tags."""
    mlflow = _mlflow(cfg)
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        artifact_root = Path(cfg.artifact_location).resolve().as_uri() if "://" not in cfg.artifact_location \
            else cfg.artifact_location
        mlflow.create_experiment(cfg.experiment, artifact_location=artifact_root)
    mlflow.set_experiment(cfg.experiment)
    tags = {"git_commit": git_commit(), "dvc_stage": stage, **(extra_tags or {})}
    for dep in stage_dependencies(stage):
        dep_path = Path(dep)
        if dep_path.exists():
            tags[f"dep_md5.{dep}"] = path_digest(dep_path)
    with mlflow.start_run(run_name=stage, tags=tags) as run:
        if params:
            flat = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in _flatten("", params).items()}
            mlflow.log_params(flat)
        yield StageRun(mlflow, cfg, stage, run)


def set_model_version_tags(cfg: TrackingConfig, name: str, version: str, tags: dict[str, Any]) -> None:
    client = _mlflow(cfg).MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def registered_models(cfg: TrackingConfig, prefix: str) -> list[dict[str, Any]]:
    """Latest version of every registered model whose name starts with prefix, with its tags and run metrics."""
    mlflow = _mlflow(cfg)
    client = mlflow.MlflowClient()
    rows = []
    for registered in client.search_registered_models():
        if not registered.name.startswith(prefix):
            continue
        versions = client.search_model_versions(f"name='{registered.name}'")
        if not versions:
            continue
        latest = max(versions, key=lambda v: int(v.version))
        run_metrics = client.get_run(latest.run_id).data.metrics if latest.run_id else {}
        rows.append({"name": registered.name, "version": latest.version, "run_id": latest.run_id,
                     "tags": dict(latest.tags), "run_metrics": dict(run_metrics)})
    return sorted(rows, key=lambda r: r["name"])
