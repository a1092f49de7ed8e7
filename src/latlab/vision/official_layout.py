"""Loader for the official Spawrious files, `spawrious224/{0,1}/{location}/{breed}/*.png` (Lynch et al. 2023), that
builds the same splits as the generator: same group definition, same manifest columns, images resized in memory.

Follows the official loader's selection (aengusl/spawrious `_create_data_list`): a training group takes the first
`count` files of its folder (here in sorted order, so it is reproducible; the official code uses `os.listdir` order);
an O2O test group takes every file of its background from folders 0 and 1, an M2M group from folder 0. A folder with
fewer files than the definition asks for is loaded as is, and the Great Expectations check reports the shortfall.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from latlab.vision.benchmark import SplitData
from latlab.vision.scm import UNIT_COLUMNS
from latlab.vision.splits import CLASSES, PAPER_PER_ENV_TOTAL, split_definition

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def dataset_root(root: str | Path) -> Path:
    """Accept either the folder holding `spawrious224/` or `spawrious224/` itself."""
    root = Path(root)
    return root if root.name == "spawrious224" else root / "spawrious224"


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _read(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)


def load_official_split(root: str | Path, name: str, per_env_total: int = PAPER_PER_ENV_TOTAL,
                        test_per_folder: int | None = None, image_size: int = 32) -> SplitData:
    """The split `name` from real files; `per_env_total` scales the training groups exactly as the generator does,
    `test_per_folder` caps each test folder (None: all files, as the official loader)."""
    base = dataset_root(root)
    rows, images = [], []
    for group in split_definition(name).groups(per_env_total, test_per_group=0):
        for folder in group.folders:
            files = _files(base / folder / group.location / group.breed)
            limit = group.count if group.part == "train" else test_per_folder
            for path in files[:limit]:
                rows.append({"part": group.part, "env": group.env, "breed": group.breed,
                             "label": CLASSES.index(group.breed), "location": group.location,
                             "u_loc": np.nan, "seed": -1, "path": str(path.relative_to(base))})
                images.append(_read(path, image_size))
    manifest = pd.DataFrame(rows, columns=[*UNIT_COLUMNS, "path"])
    stacked = np.stack(images) if images else np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    return SplitData(name, manifest, stacked, counterfactual=None)
