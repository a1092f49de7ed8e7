"""Training checkpoints so that a stage killed mid-way resumes instead of starting over.

Model weights go to safetensors; optimizer and scheduler state to a torch file read back with `weights_only=True`
(only tensors and plain containers, never arbitrary pickles). A fingerprint of the training config, the stage's
inputs and code (`latlab.training.loop`) guards against resuming a run with different settings; work counters are
saved with the step so that a resumed run's metrics count the whole run. Files are written to a temporary name and
renamed, so a kill during a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

STATE_FILE = "state.json"


def save_checkpoint(directory: Path, model, optimizer, scheduler, step: int, history: list[dict],
                    fingerprint: str, counters: dict[str, dict] | None = None) -> None:
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, "history": history, "fingerprint": fingerprint,
                                              "counters": counters or {}}))
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def _saved(directory: Path) -> Path | None:
    """The folder holding the last complete checkpoint, or None."""
    if (directory / STATE_FILE).exists():
        return directory
    old = directory.with_name(directory.name + ".old")
    return old if (old / STATE_FILE).exists() else None  # killed between the two renames of a save


def checkpoint_fingerprint(directory: Path) -> str | None:
    """The fingerprint of the checkpoint in `directory`, or None when there is none."""
    found = _saved(directory)
    return None if found is None else json.loads((found / STATE_FILE).read_text())["fingerprint"]


def load_checkpoint(directory: Path, model, optimizer, scheduler,
                    fingerprint: str) -> tuple[int, list[dict], dict[str, dict]] | None:
    """Restore into model/optimizer/scheduler; return (step, history, counters), or None if absent or from other
    settings."""
    found = _saved(directory)
    if found is None:
        return None
    state = json.loads((found / STATE_FILE).read_text())
    if state["fingerprint"] != fingerprint:
        return None
    load_model(model, str(found / "model.safetensors"))
    optim = torch.load(found / "optim.pt", weights_only=True)
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    return state["step"], state["history"], state.get("counters", {})


def clear_checkpoint(directory: Path) -> None:
    for path in (directory, directory.with_name(directory.name + ".old"), directory.with_name(directory.name + ".tmp")):
        shutil.rmtree(path, ignore_errors=True)
