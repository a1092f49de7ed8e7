"""Shared fixtures: a tiny world, its tokenizer and a tiny toy model (seconds to build)."""

from __future__ import annotations

import pytest
import torch

from latlab.config import ToyArchitecture, WorldConfig
from latlab.models.loading import build_toy_model
from latlab.world.generator import generate_world
from latlab.world.tokenizer import build_tokenizer
from tests.settings import make

TEXT_FIELDS = ("prompt", "completion", "compliance", "refusal", "clean_prompt")
TINY_WORLD = make(WorldConfig, entities_per_domain=4, verbs_per_kind=4, targets_per_kind=4)
TINY_ARCH = make(ToyArchitecture, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=64)


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)  # tests run beside other work on 2 cores; oversubscribed BLAS threads thrash


@pytest.fixture(scope="session")
def tiny_world():
    return generate_world(TINY_WORLD, seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_world):
    return build_tokenizer(r[f] for recs in tiny_world.values() for r in recs for f in TEXT_FIELDS if f in r)


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return build_toy_model(TINY_ARCH, tiny_tokenizer, seed=0)
