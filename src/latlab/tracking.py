"""The only module that talks to MLflow: one run per stage execution, metrics, artifacts, registered models.

Local default: a SQLite tracking store + registry and an artifact folder inside the project. `MLFLOW_TRACKING_URI`
in the environment (the cluster's server) replaces the params value.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from latlab.config import ConfigError, TrackingConfig

MODEL_CARD = "latlab_model.json"  # written beside saved weights: which registered version they are
WORKSPACE_TAG = "latlab.workspace"  # host:work dir of the run (stale RUNNING runs are closed per workspace)
PID_TAG = "latlab.pid"
# `dvc exp run` names each experiment in this environment variable; tagging it lets MLflow filter one DVC experiment
DVC_EXPERIMENT_ENV = "DVC_EXP_NAME"
DVC_EXPERIMENT_TAG = "dvc_experiment"
# Set by the seed study (flows/study.py) for every stage it runs; each becomes a tag of the stage's MLflow run
# (latlab.study, latlab.seed), so the runs of one study, and of one seed in it, are found by a tag search.
STUDY_ENV = {"LATLAB_STUDY": "latlab.study", "LATLAB_STUDY_SEED": "latlab.seed"}
_ALIAS_CHARS = re.compile(r"[^A-Za-z0-9_-]")  # what MLflow accepts in a registered-model alias
# Held while a process creates the tracking store or the experiment (open_experiment); gitignored
STORE_LOCK = Path(".mlflow_store.lock")
_METRIC_NAME = re.compile(r"[^\w.\- :/]")  # characters MLflow refuses in metric names


# MLflow's transformers flavor looks for a model card and a license on the Hugging Face hub under the model's name;
# our models are local (offline, no hub repo), so both lookups fail on every saved model with these warnings
MLFLOW_HUB_WARNINGS = ("The model card could not be retrieved from the hub",
                       "Unable to find license information for this model")


class _DropHubWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(MLFLOW_HUB_WARNINGS)


def silence_hub_warnings() -> None:
    """Drop exactly `MLFLOW_HUB_WARNINGS` from MLflow's transformers logger (its other warnings still show)."""
    logger = logging.getLogger("mlflow.transformers")
    if not any(isinstance(f, _DropHubWarnings) for f in logger.filters):
        logger.addFilter(_DropHubWarnings())


def tracking_uri(cfg: TrackingConfig) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri


def _mlflow(cfg: TrackingConfig):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    silence_hub_warnings()
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


def stage_dependencies(stage: str, dvc_yaml: Path = Path("dvc.yaml"), field: str = "deps") -> list[str]:
    """The `deps` (or `params`, with `field`) dvc.yaml declares for `stage`; [] when dvc.yaml or the stage is absent."""
    if not dvc_yaml.exists():
        return []
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})
    base, _, item = stage.partition("@")  # a foreach/matrix stage `name@item` shares its template's deps
    spec = stages.get(base, {})
    deps = spec.get("do", spec).get(field, []) if item else spec.get(field, [])
    return [dep.replace("${key}", item).replace("${item}", item) for dep in deps if isinstance(dep, str)]


def dependency_digests(stage: str) -> dict[str, str]:
    """dvc.yaml dependency of `stage` -> `path_digest` (data, models and the code the stage runs), for those present."""
    return {dep: path_digest(Path(dep)) for dep in stage_dependencies(stage) if Path(dep).exists()}


def git_commit() -> str:
    """HEAD of the work tree; in images without .git, the commit the image was built from (LATLAB_GIT_COMMIT)."""
    if os.environ.get("LATLAB_GIT_COMMIT"):
        return os.environ["LATLAB_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(stage: str) -> dict[str, str]:
    """What identifies a stage run: the code (git commit), the DVC stage, the DVC experiment when run by `dvc exp
    run` (absent for a plain `dvc repro`), and the workspace + pid that `close_stale_runs` needs."""
    tags = {"git_commit": git_commit(), "dvc_stage": stage, WORKSPACE_TAG: workspace(), PID_TAG: str(os.getpid())}
    if os.environ.get(DVC_EXPERIMENT_ENV):
        tags[DVC_EXPERIMENT_TAG] = os.environ[DVC_EXPERIMENT_ENV]
    return tags


def version_aliases(environ: dict[str, str] | None = None) -> list[str]:
    """The registry aliases of a version registered now: `<study>-seed<s>` inside a seed study (flows/study.py sets
    `STUDY_ENV`) and `dvc-exp-<name>` inside `dvc exp run`; [] for a plain run, whose versions the model cards name.
    An alias names one version per registered model, so `cards_by_alias` (`python -m stages.compare --alias`) finds
    what one study seed or one DVC experiment produced in a registry shared by many (an MLflow server), whatever was
    registered after it."""
    environ = os.environ if environ is None else environ
    aliases = []
    study = study_tags(environ)
    if len(study) == len(STUDY_ENV):
        aliases.append(f"{study['latlab.study']}-seed{study['latlab.seed']}")
    if environ.get(DVC_EXPERIMENT_ENV):
        aliases.append(f"dvc-exp-{environ[DVC_EXPERIMENT_ENV]}")
    return [_ALIAS_CHARS.sub("_", alias) for alias in aliases]


def _set_aliases(client, name: str, version: str) -> list[str]:
    aliases = version_aliases()
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version)  # moves the alias if an earlier version held it
    return aliases


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


def track_of(role: str) -> str:
    """The research track of a model folder below models/ (registered-model tag `track`)."""
    if role == "oracle" or role.startswith("unlearn/"):
        return "unlearning"
    if role.startswith("backdoor_removal/"):
        return "backdoor"
    if role.startswith("spawrious"):
        return "spawrious"
    return "jailbreak"


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

    def log_dataset(self, path: str | Path, digest: str, context: str = "training") -> None:
        """Record a data folder (a DVC output) as this run's input dataset: MLflow's Dataset column, with the
        folder's md5 as digest so two runs on different data are told apart."""
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        with warnings.catch_warnings():  # a file:// URI matches MLflow's two local sources, which are the same class
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            source = resolve_dataset_source(Path(path).resolve().as_uri())
        self.mlflow.log_input(MetaDataset(source, name=str(path), digest=digest[:16]), context=context)

    def log_model(self, model, tokenizer, role: str, out_dir: Path, tags: dict[str, str] | None = None,
                  description: str = "") -> dict:
        """Log a HF model (transformers flavor, safetensors) named by its role and register it as `latlab-<role>`
        (docs/naming.md), with `description` (the model card, latlab.report.model_card) on the version and the
        registered model tagged with its `track` and `role`.

        Writes `out_dir/latlab_model.json` so later stages know which registered version (and logged model id)
        the weights are.
        """
        name = "latlab-" + role.replace("/", "-")
        card: dict[str, Any] = {"role": role, "registered_name": name, "run_id": self.run_id, "version": None,
                                "tags": tags or {}}
        if self.cfg.log_models:
            info = self.mlflow.transformers.log_model(
                transformers_model={"model": model, "tokenizer": tokenizer}, name=role.replace("/", "-"),
                task="text-generation", registered_model_name=name, save_pretrained=True,
                # explicit requirements: MLflow's inference imports torchvision, which this stack does not ship
                pip_requirements=_model_requirements())
            version = str(info.registered_model_version)
            client = self.mlflow.MlflowClient()
            for key, value in {**(tags or {}), "stage": self.stage, "role": role}.items():
                client.set_model_version_tag(name, version, key, str(value))
            for key, value in {"track": track_of(role), "role": role}.items():
                client.set_registered_model_tag(name, key, value)
            if description:
                client.update_model_version(name, version, description=description)
            card["version"], card["model_id"] = version, info.model_id
            card["aliases"] = _set_aliases(client, name, version)
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
        _set_aliases(client, name, version_id)
        return version_id


def workspace() -> str:
    """This machine and work directory: runs of one stage in one workspace never overlap (DVC locks the repo)."""
    return f"{socket.gethostname()}:{Path.cwd().resolve()}"


def _alive(pid: str | None) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def close_stale_runs(mlflow, experiment_id: str, stage: str) -> list[str]:
    """Mark KILLED the runs of `stage` from this workspace that are still RUNNING although their process is gone (a
    SIGKILL, a crashed machine); runs of other workspaces (parallel sweep pods) are left alone. Returns their ids."""
    client = mlflow.MlflowClient()
    here = workspace()
    stale = []
    for run in client.search_runs([experiment_id], filter_string=f"tags.dvc_stage = '{stage}' and "
                                  "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if tags.get(WORKSPACE_TAG, here) != here or _alive(tags.get(PID_TAG)):
            continue
        client.set_terminated(run.info.run_id, status="KILLED")
        stale.append(run.info.run_id)
    if stale:
        print(f"[{stage}] marked {len(stale)} earlier MLflow run(s) of this stage KILLED (left RUNNING by a killed "
              f"process): {', '.join(stale)}", flush=True)
    return stale


def study_tags(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The study tags (`STUDY_ENV`) of a run started with those variables set; {} outside a study."""
    environ = os.environ if environ is None else environ
    return {tag: environ[var] for var, tag in STUDY_ENV.items() if environ.get(var)}


def open_experiment(mlflow, cfg: TrackingConfig):
    """Create (first use) and select the tracking store's experiment `cfg.experiment`; returns it.

    Stages start side by side (flows.repro, the seed study, a Prefect flow's parallel tasks), and on a fresh workspace
    two processes creating the SQLite store at once fail in its schema migration (alembic: "expected to match one row
    when updating ..."), or both create the experiment. So the first touch of the store, which creates and migrates
    it, and the experiment's creation happen under a file lock beside the workspace (`STORE_LOCK`); a server store
    (`MLFLOW_TRACKING_URI=http...`) migrates itself, and a lost creation race there is taken as the other's success."""
    from filelock import FileLock
    from mlflow.exceptions import MlflowException

    with FileLock(str(STORE_LOCK)):
        if mlflow.get_experiment_by_name(cfg.experiment) is None:
            artifact_root = Path(cfg.artifact_location).resolve().as_uri() if "://" not in cfg.artifact_location \
                else cfg.artifact_location
            try:
                mlflow.create_experiment(cfg.experiment, artifact_location=artifact_root)
            except MlflowException:
                if mlflow.get_experiment_by_name(cfg.experiment) is None:
                    raise
        return mlflow.set_experiment(cfg.experiment)


@contextmanager
def stage_run(cfg: TrackingConfig, stage: str, params: dict[str, Any] | None = None,
              extra_tags: dict[str, str] | None = None, dep_digests: dict[str, str] | None = None
              ) -> Iterator[StageRun]:
    """Open an MLflow run for one stage execution with params, `run_tags` (commit, DVC stage and experiment) and
    dependency hashes as tags (`dep_digests`: `dependency_digests(stage)` when already computed).

    The run ends FINISHED, FAILED on an exception, or KILLED when the process is stopped (SystemExit from a SIGTERM
    handler, KeyboardInterrupt); this stage's older runs left RUNNING by a killed process are marked KILLED first."""
    mlflow = _mlflow(cfg)
    experiment = open_experiment(mlflow, cfg)
    close_stale_runs(mlflow, experiment.experiment_id, stage)
    tags = {**run_tags(stage), **study_tags(), **(extra_tags or {})}
    digests = dependency_digests(stage) if dep_digests is None else dep_digests
    tags.update({f"dep_md5.{dep}": digest for dep, digest in digests.items()})
    with mlflow.start_run(run_name=stage, tags=tags) as run:
        try:
            if params:
                flat = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in _flatten("", params).items()}
                mlflow.log_params(flat)
            yield StageRun(mlflow, cfg, stage, run)
        except (SystemExit, KeyboardInterrupt):
            mlflow.end_run("KILLED")
            raise


LOCAL_UI = "http://127.0.0.1:5000"  # where `make mlflow-ui` serves a local (sqlite) store


def latest_stage_runs(cfg: TrackingConfig) -> dict[str, dict[str, Any]]:
    """DVC stage -> {"run_id", "url", "duration_s"} of its latest FINISHED run in this workspace's experiment (for
    the report's links). The URL points at the tracking server when the URI is http(s), else at `make mlflow-ui`.
    A local store keeps only this workspace's runs (a copied mlflow.db may hold another checkout's); a server's runs
    come from pods with other host names, so all are kept."""
    mlflow = _mlflow(cfg)
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        return {}
    uri = tracking_uri(cfg)
    remote = uri.startswith(("http://", "https://"))
    base = uri.rstrip("/") if remote else LOCAL_UI
    runs = mlflow.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], output_format="list")
    latest: dict[str, dict[str, Any]] = {}
    for run in runs:
        stage = run.data.tags.get("dvc_stage") or run.info.run_name
        if stage in latest or (not remote and run.data.tags.get(WORKSPACE_TAG) not in (None, workspace())):
            continue
        latest[stage] = {"run_id": run.info.run_id,
                         "url": f"{base}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}",
                         "duration_s": (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None}
    return latest


def model_version_description(cfg: TrackingConfig, name: str, version: str) -> str:
    return _mlflow(cfg).MlflowClient().get_model_version(name, str(version)).description or ""


def record_model_evaluation(cfg: TrackingConfig, card: dict[str, Any], metrics: dict[str, float],
                            description: str) -> None:
    """A registered model's evaluation: numeric metrics linked to its logged model (MLflow 3: the Logged Models
    page and `get_logged_model(id).metrics`; sortable, unlike tags) in the active run, and `description` (the card
    with its evaluation section) on its registered version."""
    mlflow = _mlflow(cfg)
    clean = {_METRIC_NAME.sub("_", k): float(v) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if card.get("model_id") and clean:
        mlflow.log_metrics(clean, model_id=card["model_id"])
    if card.get("version"):
        mlflow.MlflowClient().update_model_version(card["registered_name"], str(card["version"]),
                                                   description=description)


def model_versions(cfg: TrackingConfig, cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The registered version each model card (`MODEL_CARD`, written by `StageRun.log_model`) names, with its tags,
    run metrics and evaluation metrics (those linked to its logged model by `record_model_evaluation`), in the
    cards' order: exactly the models a run produced, whatever else the registry holds. A card without a version
    (tracking.log_models false) gives its own tags."""
    client = _mlflow(cfg).MlflowClient()
    rows = []
    for card in cards:
        name, version = card["registered_name"], card.get("version")
        tags = dict(card.get("tags", {}))
        if version is not None:
            tags = dict(client.get_model_version(name, str(version)).tags)
        run_metrics = client.get_run(card["run_id"]).data.metrics if card.get("run_id") else {}
        evaluation = ({m.key: m.value for m in client.get_logged_model(card["model_id"]).metrics or []}
                      if card.get("model_id") else {})
        rows.append({"name": name, "version": str(version) if version is not None else "-",
                     "run_id": card.get("run_id"), "tags": tags, "run_metrics": dict(run_metrics),
                     "eval_metrics": evaluation, **({"alias": card["alias"]} if card.get("alias") else {})})
    return rows


def cards_by_alias(cfg: TrackingConfig, alias: str, prefix: str = "latlab-") -> list[dict[str, Any]]:
    """Model cards (as `model_versions` reads them) of the version holding `alias` in each registered model named
    `prefix*`, by name; models without that alias are left out. ConfigError when no model has it."""
    from mlflow.exceptions import MlflowException

    client = _mlflow(cfg).MlflowClient()
    cards = []
    for model in sorted(client.search_registered_models(f"name LIKE '{prefix}%'"), key=lambda m: m.name):
        if alias not in (model.aliases or {}):
            continue
        try:
            version = client.get_model_version_by_alias(model.name, alias)
        except MlflowException:  # the alias was deleted meanwhile
            continue
        # MLflow 3 names the logged model in the version's source (`models:/m-...`); its model_id field stays empty
        model_id = getattr(version, "model_id", None) or (version.source.removeprefix("models:/")
                                                          if (version.source or "").startswith("models:/m-") else None)
        cards.append({"registered_name": model.name, "version": version.version, "run_id": version.run_id,
                      "model_id": model_id, "alias": alias})
    if not cards:
        raise ConfigError(f"--alias {alias}: no registered model {prefix}* has it in {tracking_uri(cfg)}")
    return cards
