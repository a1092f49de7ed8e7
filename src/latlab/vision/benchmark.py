"""One Spawrious split as data on disk and in memory: generate it from the SCM (or load it from the official
layout), save/load it, turn it into training tensors, and evaluate a trained model on its test part.

On disk a split is `manifest.csv` (the SCM unit table, one row per image) and `images.npz` (`images` [n, H, W, 3]
uint8 in manifest order; `counterfactual` [n_test, 6, H, W, 3]: every test image re-rendered on each of the six
backgrounds with the same exogenous noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from latlab.vision.methods import ImageData, images_to_tensor, predict
from latlab.vision.metrics import average_accuracy, summarise, worst_class_accuracy
from latlab.vision.render import ImageSource, RenderSettings
from latlab.vision.scm import SpawriousSCM
from latlab.config import SpawriousDataConfig
from latlab.vision.splits import LOCATIONS, split_definition, split_stream


@dataclass
class SplitData:
    name: str
    manifest: pd.DataFrame  # columns of scm.UNIT_COLUMNS (+ "path" for real files)
    images: np.ndarray  # [n, H, W, 3] uint8, manifest order
    counterfactual: np.ndarray | None = None  # [n_test, len(LOCATIONS), H, W, 3] uint8

    def part(self, part: str) -> np.ndarray:
        return (self.manifest["part"] == part).to_numpy()


def render_settings(cfg: SpawriousDataConfig) -> RenderSettings:
    return RenderSettings(**cfg.render.model_dump())


def generate_split(name: str, cfg: SpawriousDataConfig, source: ImageSource | None = None,
                   counterfactual: bool = True) -> SplitData:
    definition = split_definition(name)
    scm = SpawriousSCM(render_settings(cfg), source)
    # one stream per split, so adding a split to the grid does not change the others
    rng = np.random.default_rng([cfg.seed, split_stream(name)])
    envs = {env.name: env for env in definition.environments}
    units = scm.sample_groups(definition.groups(cfg.per_env_total, cfg.test_per_group), envs, rng)
    images = scm.render(units)
    cf = None
    if counterfactual:
        test = units[units["part"] == "test"]
        cf = np.stack([scm.render(scm.counterfactual(test, location)) for location in LOCATIONS], axis=1)
    return SplitData(name, units, images, cf)


def save_split(data: SplitData, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data.manifest.to_csv(out_dir / "manifest.csv", index=False)
    arrays = {"images": data.images}
    if data.counterfactual is not None:
        arrays["counterfactual"] = data.counterfactual
    np.savez_compressed(out_dir / "images.npz", **arrays)


def load_split(directory: str | Path, name: str | None = None) -> SplitData:
    directory = Path(directory)
    manifest = pd.read_csv(directory / "manifest.csv")
    with np.load(directory / "images.npz") as arrays:
        images = arrays["images"]
        cf = arrays["counterfactual"] if "counterfactual" in arrays.files else None
    return SplitData(name or directory.name, manifest, images, cf)


def group_names(manifest: pd.DataFrame) -> np.ndarray:
    return (manifest["breed"] + "/" + manifest["location"]).to_numpy()


def training_data(data: SplitData) -> tuple[ImageData, list[str]]:
    """Training part as tensors; group ids index the sorted (breed/location) names returned alongside."""
    mask = data.part("train")
    train = data.manifest[mask]
    names = group_names(train)
    vocab = sorted(set(names.tolist()))
    env_vocab = sorted(train["env"].unique())
    return ImageData(
        x=images_to_tensor(data.images[mask]),
        y=torch.tensor(train["label"].to_numpy(), dtype=torch.long),
        env=torch.as_tensor([env_vocab.index(e) for e in train["env"]], dtype=torch.long),
        group=torch.as_tensor([vocab.index(g) for g in names], dtype=torch.long),
    ), vocab


def evaluate(model: torch.nn.Module, data: SplitData, part: str = "test") -> dict:
    """Average / worst-group accuracy and per-group table on `part`; counterfactual invariance on the test part
    when the split carries counterfactual images."""
    mask = data.part(part)
    rows = data.manifest[mask]
    pred = predict(model, images_to_tensor(data.images[mask])).numpy()
    cf_pred = same = None
    if part == "test" and data.counterfactual is not None:
        n, k = data.counterfactual.shape[:2]
        flat = data.counterfactual.reshape(n * k, *data.counterfactual.shape[2:])
        cf_pred = predict(model, images_to_tensor(flat)).numpy().reshape(n, k)
        same = rows["location"].to_numpy()[:, None] == np.asarray(LOCATIONS)[None, :]
    return summarise(pred, rows["label"].to_numpy(), group_names(rows), cf_pred, same)


def heldout_scores(model: torch.nn.Module, heldout: ImageData) -> dict:
    """Average and worst-class accuracy on held-out training-distribution data (the label-only selection scores)."""
    pred, label = predict(model, heldout.x).numpy(), heldout.y.numpy()
    return {"average_accuracy": average_accuracy(pred, label), "worst_class_accuracy": worst_class_accuracy(pred, label)}
