"""Shared fixtures: a tiny world, its tokenizer and a tiny toy model (seconds to build)."""

from __future__ import annotations

import os

import latlab  # noqa: F401, I001  (first: applies src/latlab/offline.env before torch, transformers, MLflow)
import pytest
import torch

from latlab.config import ToyArchitecture, WorldConfig
from latlab.models.loading import build_toy_model
from latlab.world.generator import generate_world
from latlab.world.tokenizer import TEXT_FIELDS, world_tokenizer  # noqa: F401  (TEXT_FIELDS: tests import it from here)
from tests.settings import make

TINY_WORLD = make(WorldConfig, entities_per_domain=4, verbs_per_kind=4, targets_per_kind=4)
TINY_ARCH = make(ToyArchitecture, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=64)


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)  # tests run beside other work on 2 cores; oversubscribed BLAS threads thrash


@pytest.fixture(autouse=True)
def no_leaked_tracking_uri():
    """mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI in os.environ: restored after every test, so a test's
    file store never reaches a later test's subprocesses (DVC stages, Prefect workers)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A stage's working directory: the current directory is tmp, no MLflow server in the environment (a test's
    params name a local tracking URI), file-store tracking allowed, a fixed git commit tag."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("LATLAB_GIT_COMMIT", "test")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return tmp_path


@pytest.fixture(scope="session")
def tiny_world():
    return generate_world(TINY_WORLD, seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_world):
    return world_tokenizer(tiny_world)


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return build_toy_model(TINY_ARCH, tiny_tokenizer, seed=0)


@pytest.fixture(scope="session")
def tiny_rt_model(tiny_world, tiny_tokenizer):
    """Helpful base model, then refusal training on the tiny world: ~7 s on one thread. Shared: do not modify."""
    from latlab.config import TrainConfig
    from latlab.training.sft import train_sft
    from latlab.world.curriculum import base_pools, refusal_pools

    torch.set_num_threads(1)
    model = build_toy_model(TINY_ARCH, tiny_tokenizer, seed=0)
    base = make(TrainConfig, steps=600, batch_size=16, lr=3e-3, warmup_steps=5, log_every=100)
    train_sft(model, tiny_tokenizer, base_pools(tiny_world), {"facts": 1, "requests": 1, "backdoor": 0.5}, base,
              None, "tiny-base")
    train_sft(model, tiny_tokenizer, refusal_pools(tiny_world), {"harmful": 1, "benign": 1, "facts": 0.5},
              base.model_copy(update={"steps": 150, "lr": 2e-3}), None, "tiny-rt")
    model.eval()
    return model
