"""Training checkpoints so that a stage killed mid-way resumes instead of starting over.

Model weights go to safetensors; optimizer and scheduler state to a torch file read back with `weights_only=True`
(only tensors and plain containers, never arbitrary pickles). A fingerprint of the training config guards against
resuming a run with different settings. Files are written to a temporary name and renamed, so a kill during a save
leaves the previous checkpoint intact.
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
                    fingerprint: str) -> None:
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, "history": history, "fingerprint": fingerprint}))
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(directory: Path, model, optimizer, scheduler, fingerprint: str) -> tuple[int, list[dict]] | None:
    """Restore into model/optimizer/scheduler; return (step, history), or None if absent or from other settings."""
    if not (directory / STATE_FILE).exists():
        old = directory.with_name(directory.name + ".old")
        if not (old / STATE_FILE).exists():
            return None
        directory = old  # killed between the two renames of a save
    state = json.loads((directory / STATE_FILE).read_text())
    if state["fingerprint"] != fingerprint:
        return None
    load_model(model, str(directory / "model.safetensors"))
    optim = torch.load(directory / "optim.pt", weights_only=True)
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    return state["step"], state["history"]


def clear_checkpoint(directory: Path) -> None:
    for path in (directory, directory.with_name(directory.name + ".old"), directory.with_name(directory.name + ".tmp")):
        shutil.rmtree(path, ignore_errors=True)
