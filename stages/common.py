"""What every stage shares: load and check params, turn known user errors into one clear line, stop cleanly on
SIGTERM, write metrics JSON, end with one summary line."""

from __future__ import annotations

import ctypes
import hashlib
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from latlab import parallel
from latlab.check import stage_problems
from latlab.config import ConfigError, Params, load_params
from latlab.data.records import DataFormatError
from latlab.data.validation import DataValidationError
from latlab.models.encoding import ContextLengthError
from latlab.models.loading import ModelSourceError
from latlab.training.loop import NonFiniteLossError, checkpoint_inputs, request_stop

USER_ERRORS = (ConfigError, ContextLengthError, DataFormatError, DataValidationError, ModelSourceError,
               NonFiniteLossError, FileNotFoundError)
SIGTERM_STATUS = 143  # 128 + SIGTERM: what a shell reports for a process ended by the signal
PR_SET_PDEATHSIG = 1

WORLD_DIR = Path("data/world")
TOKENIZER_DIR = Path("data/tokenizer")
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")
REPORTS_DIR = Path("reports")
CHECKPOINTS_DIR = Path("checkpoints")


def output_stem(section: str) -> str:
    """The one naming rule (docs/naming.md): params section `unlearn.ga` -> DVC stage `unlearn@ga` -> files
    `metrics/unlearn/ga.json`, `plots/unlearn/ga_loss.png`, `checkpoints/unlearn/ga`; a plain stage keeps its name."""
    return section.replace(".", "/")


def dvc_stage_name(section: str) -> str:
    return section.replace(".", "@", 1)


def write_metrics(stage: str, metrics: dict) -> Path:
    path = METRICS_DIR / f"{output_stem(stage)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return path


def stage_done(stage: str, written: list[str | Path], numbers: dict[str, float | int | str] | None = None) -> str:
    """Print (and return) a stage's last line: what it wrote and its key numbers, so a `dvc repro` log reads as one
    line per finished stage instead of a wall of per-step output."""
    shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in (numbers or {}).items())
    line = f"[{dvc_stage_name(stage)}] done: wrote {', '.join(str(p) for p in written)}" + (f"; {shown}" if shown
                                                                                           else "")
    print(line, flush=True)
    return line


def _die_with_parent(sig: int) -> None:
    """Linux: the kernel sends `sig` to this process when its parent dies (0: no longer), so a stage whose `dvc`
    (or flow) process is killed stops too instead of finishing orphaned, outside dvc.lock."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
        except (OSError, AttributeError):
            pass


@contextmanager
def _terminable(stage: str) -> Iterator[None]:
    """SIGTERM (Kubernetes, a scheduler, the parent process dying) ends the stage cleanly: a running training loop
    saves a checkpoint after its current step, otherwise the stage stops at once; either way the MLflow run ends
    KILLED (`latlab.tracking.stage_run`) and the process exits 143."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return

    def on_sigterm(signum, frame) -> None:
        if request_stop():
            print(f"[{stage}] SIGTERM: stopping after the current training step (a checkpoint is saved)",
                  file=sys.stderr, flush=True)
            return
        print(f"[{stage}] SIGTERM: stopped", file=sys.stderr, flush=True)
        raise SystemExit(SIGTERM_STATUS)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    _die_with_parent(signal.SIGTERM)
    try:
        yield
    finally:
        _die_with_parent(0)
        signal.signal(signal.SIGTERM, previous)


def _launch(command: list[str]) -> int:
    """Run the data-parallel launcher; a SIGTERM here is passed on to it (and so to every process) before exiting."""
    with subprocess.Popen(command) as proc:
        try:
            return proc.wait()
        except SystemExit:
            proc.terminate()
            proc.wait()
            raise


def run_stage(stage: str, body: Callable[[Params], None], params_path: str = "params.yaml",
              data_parallel: bool = False) -> None:
    """Run a stage body with validated params; known user errors exit 2 with a one-line message (no traceback). The
    block indices and hook points of the stage's params are checked against the model's depth before anything loads
    (`latlab.check.stage_problems`); SIGTERM stops the stage cleanly (`_terminable`).

    A training stage (`data_parallel`) with `model.processes` > 1 reruns itself under the launcher as that many
    data-parallel processes; process 0 saves, tracks and writes the metrics."""
    with _terminable(stage):
        try:
            params = load_params(params_path)
            problems = stage_problems(params, stage, params_path)
            if problems:
                raise ConfigError("\n".join(problems))
            if data_parallel and params.model.processes > 1 and not parallel.launched():
                spec = sys.modules["__main__"].__spec__
                if spec is None:
                    raise ConfigError("model.processes > 1: start the stage as `python -m stages.<name>`")
                module = spec.name
                command = parallel.launch_command(params.model.processes, module, sys.argv[1:])
                print(f"[{stage}] {params.model.processes} data-parallel processes: {' '.join(command)}", flush=True)
                raise SystemExit(_launch(command))
            body(params)
        except USER_ERRORS as err:
            for line in str(err).splitlines():
                print(f"[{stage}] error: {line}", file=sys.stderr)
            raise SystemExit(2) from None
        finally:
            parallel.finish()


def _train(params: Params, stage: str, model, train: Callable | None, on_log: Callable):
    """(model, TrainResult, extra metrics, trained fraction); LoRA adapters are merged back into the model."""
    from latlab.models.adapters import finish_training, prepare_for_training, trainable_fraction
    from latlab.training.loop import TrainResult

    if train is None:
        return model, TrainResult(), {}, 0.0
    # LoRA is injected in place, so `train` (which closed over `model`) trains the adapters
    adapter = prepare_for_training(model, params.model)
    trained_fraction = trainable_fraction(model)
    result, extra = train(CHECKPOINTS_DIR / output_stem(stage), on_log)
    # each data-parallel process counted its own work
    extra.update(parallel.summed({k: v for k, v in extra.items() if k.startswith("compute.")}))
    return finish_training(model, adapter, params.model), result, extra, trained_fraction


def parent_version(registered_name: str | None) -> str | None:
    """The registered version of a parent model (`latlab-rt` -> models/rt's model card), for the model card."""
    if not registered_name:
        return None
    from latlab.tracking import MODEL_CARD

    path = MODELS_DIR / registered_name.removeprefix("latlab-") / MODEL_CARD
    return json.loads(path.read_text()).get("version") if path.exists() else None


def train_and_register(params: Params, stage: str, role: str, model, tokenizer, train: Callable | None, train_cfg,
                       tags: dict[str, str]) -> dict:
    """Run `train(checkpoint_dir, on_log) -> (TrainResult, extra metrics)`, then save the model to models/<role>,
    its curve and metrics, and register it in MLflow as latlab-<role> (`/` -> `-`). `stage` is the params section
    (dotted for a method-table entry, see `output_stem`). `train=None` registers the model unchanged.
    Data-parallel processes other than process 0 only train (and return {})."""
    from latlab.config import section_dict
    from latlab.models.loading import save_model
    from latlab.report.plots import plot_training_curve, write_history_csv
    from latlab.report.model_card import training_card
    from latlab.tracking import dependency_digests, git_commit, stage_run

    stage_params = {stage: section_dict(params, stage), "model": section_dict(params, "model"), "seed": params.seed}
    digests = dependency_digests(dvc_stage_name(stage))
    # a checkpoint is resumed only by a run of the same params, input data, starting model and code (dvc.yaml deps)
    inputs = hashlib.sha256(json.dumps({"params": stage_params, "deps": digests}, sort_keys=True,
                                       default=str).encode()).hexdigest()[:16]
    with checkpoint_inputs(inputs):
        if not parallel.is_main():
            _train(params, stage, model, train, lambda step, row: None)
            return {}
        out_dir = MODELS_DIR / role
        stem = output_stem(stage)
        with stage_run(params.tracking, dvc_stage_name(stage), stage_params, dep_digests=digests) as run:
            for dep, digest in digests.items():
                if dep.startswith("data/"):
                    run.log_dataset(dep, digest)
            model, result, extra, trained_fraction = _train(
                params, stage, model, train,
                lambda step, row: run.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step))
            save_model(model, tokenizer, out_dir)
            write_history_csv(result.history, PLOTS_DIR / f"{stem}_loss.csv")
            plot_training_curve(result.history, PLOTS_DIR / f"{stem}_loss.png",
                                f"{dvc_stage_name(stage)}: training losses")
            metrics = {**({"final_loss": result.history[-1]["loss"]} if result.history else {}),
                       "steps": train_cfg.steps if train is not None else 0,
                       "wall_seconds": round(result.wall_seconds, 2), "resumed_from_step": result.resumed_from,
                       "optimizer_steps": result.forward_backward_passes, "batch_size": train_cfg.batch_size,
                       "parameters": sum(p.numel() for p in model.parameters()),
                       "trainable_fraction": round(trained_fraction, 6),
                       **({"processes": parallel.world_size()} if parallel.world_size() > 1 else {}), **extra}
            write_metrics(stage, metrics)
            run.log_metrics(metrics)
            run.log_artifact(PLOTS_DIR / f"{stem}_loss.png", "plots")
            run.log_model(model, tokenizer, role, out_dir, tags=tags, description=training_card(
                role, dvc_stage_name(stage), tags, git_commit(), digests, stage_params, metrics,
                parent_version(tags.get("parent"))))
    stage_done(stage, [out_dir, METRICS_DIR / f"{stem}.json", PLOTS_DIR / f"{stem}_loss.png"],
               {k: metrics[k] for k in ("final_loss", "steps", "wall_seconds") if k in metrics})
    return metrics


def sft_trainer(model, tokenizer, pools: dict, weights: dict, cfg, stage: str) -> Callable:
    """A `train` callable for `train_and_register` that runs SFT on weighted pools."""
    from latlab.training.sft import train_sft

    def train(checkpoint_dir, on_log):
        result = train_sft(model, tokenizer, pools, weights, cfg, checkpoint_dir, stage, on_log=on_log)
        passes = result.forward_backward_passes * cfg.batch_size // parallel.world_size()  # this process's
        return result, {"compute.total_passes": passes, **{f"pool_size.{n}": len(p) for n, p in pools.items()}}

    return train
