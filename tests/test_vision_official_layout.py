"""The official-layout loader on a miniature `spawrious224/{0,1}/{location}/{breed}/*.png` tree, and the Great
Expectations manifest check on loaded, generated and corrupted manifests."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latlab.vision.benchmark import generate_split
from latlab.vision.official_layout import load_official_split
from latlab.config import RenderConfig, SpawriousDataConfig
from latlab.vision.splits import CLASSES, LOCATIONS, split_definition
from latlab.vision.validation import validate_manifest
from tests.settings import make

FILES_PER_FOLDER = 12


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Every folder/location/breed holds 12 tiny PNGs whose red channel encodes (folder, location, breed)."""
    root = tmp_path_factory.mktemp("official")
    for folder in ("0", "1"):
        for li, location in enumerate(LOCATIONS):
            for bi, breed in enumerate(CLASSES):
                d = root / "spawrious224" / folder / location / breed
                d.mkdir(parents=True)
                code = int(folder) * 100 + li * 10 + bi
                for i in range(FILES_PER_FOLDER):
                    Image.fromarray(np.full((20, 20, 3), code, dtype=np.uint8)).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def gx_failures():
    def failures(manifest, name, total, test_per_group):
        summary = validate_manifest(manifest, split_definition(name), total, test_per_group)
        return summary["success"], [c["expectation"] for c in summary["checks"] if not c["success"]]
    return failures


def _code(image) -> int:
    return int(image[0, 0, 0])


def test_o2o_loader_builds_the_split(tree, gx_failures):
    data = load_official_split(tree, "o2o_easy", per_env_total=10, image_size=8)
    m = data.manifest
    counts = m.groupby(["part", "env", "breed", "location"]).size().to_dict()
    assert counts["train", "train_0", "bulldog", "desert"] == 9  # int(0.97 * 10)
    assert counts["train", "train_0", "bulldog", "beach"] == 1
    assert counts["train", "train_1", "bulldog", "desert"] == 8  # int(0.87 * 10)
    assert counts["train", "train_1", "corgi", "beach"] == 2
    assert counts["test", "test", "labrador", "desert"] == 2 * FILES_PER_FOLDER  # both folders, every file
    assert data.images.shape == (len(m), 8, 8, 3)
    for row, image in zip(m.itertuples(), data.images):  # each image came from the folder its row names
        folder, location, breed = Path(row.path).parts[:3]
        assert (location, breed) == (row.location, row.breed)
        assert _code(image) == int(folder) * 100 + LOCATIONS.index(location) * 10 + CLASSES.index(breed)
        if row.part == "train":
            assert folder == row.env[-1]
    ok, failed = gx_failures(m, "o2o_easy", 10, 0)
    assert ok, failed


def test_m2m_loader_reads_folder_zero_only(tree):
    data = load_official_split(tree / "spawrious224", "m2m_hard", per_env_total=5, test_per_folder=3, image_size=8)
    assert {Path(p).parts[0] for p in data.manifest["path"]} == {"0"}
    counts = data.manifest.groupby(["part", "breed", "location"]).size()
    assert (counts["train"] == 5).all() and (counts["test"] == 3).all() and len(counts["test"]) == 8


def test_missing_files_are_caught_by_the_manifest_check(tree, gx_failures, tmp_path):
    # asking for more training images per group than the folders hold: the loader loads what is there, GX objects
    data = load_official_split(tree, "m2m_easy", per_env_total=FILES_PER_FOLDER + 3, image_size=8)
    ok, failed = gx_failures(data.manifest, "m2m_easy", FILES_PER_FOLDER + 3, 0)
    assert not ok and failed == ["expect_column_pair_values_to_be_equal"]


def test_generated_manifest_passes_and_corruptions_fail(gx_failures):
    cfg = make(SpawriousDataConfig, per_env_total=30, test_per_group=5, render=make(RenderConfig, image_size=8))
    manifest = generate_split("o2o_medium", cfg, counterfactual=False).manifest
    assert gx_failures(manifest, "o2o_medium", 30, 5) == (True, [])

    dropped = manifest.drop(index=manifest.index[(manifest["breed"] == "corgi") & (manifest["location"] == "desert")
                                                 & (manifest["env"] == "train_0")][:1])
    assert gx_failures(dropped, "o2o_medium", 30, 5) == (False, ["expect_column_pair_values_to_be_equal"])

    relabelled = manifest.copy()
    relabelled.loc[relabelled.index[0], "label"] = (relabelled.loc[relabelled.index[0], "label"] + 1) % 4
    assert gx_failures(relabelled, "o2o_medium", 30, 5) == (False, ["expect_column_pair_values_to_be_in_set"])

    moved = manifest.copy()
    # the last row is a labrador test image (test background beach); mountain is not a test group of o2o_medium
    assert tuple(moved.iloc[-1][["part", "breed", "location"]]) == ("test", "labrador", "beach")
    moved.loc[moved.index[-1], "location"] = "mountain"
    assert gx_failures(moved, "o2o_medium", 30, 5) == (
        False, ["expect_column_values_to_be_in_set", "expect_column_pair_values_to_be_equal"])
