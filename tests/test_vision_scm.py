"""The SCM: interventions and counterfactuals change the background and nothing else."""

import dataclasses

import numpy as np
import pytest

from latlab.vision.render import BREEDS, PromptImageSource, RenderSettings, object_mask
from latlab.vision.scm import SpawriousSCM
from latlab.vision.splits import LOCATIONS, split_definition

SETTINGS = RenderSettings(image_size=24)


@pytest.fixture(scope="module")
def scm():
    return SpawriousSCM(SETTINGS)


@pytest.fixture(scope="module")
def env():
    return split_definition("o2o_easy").environment("train_0")


def _split_pixels(scm, units, a, b):
    """(object pixels equal, share of background pixels that differ) per unit, images a vs b."""
    same_object, bg_changed = [], []
    for i, (breed, seed) in enumerate(zip(units["breed"], units["seed"])):
        mask = object_mask(scm.object_of(breed, int(seed)), SETTINGS.image_size)
        assert 0 < mask.mean() < 0.8
        same_object.append(np.array_equal(a[i][mask], b[i][mask]))
        bg_changed.append(float(np.any(a[i] != b[i], axis=-1)[~mask].mean()))
    return np.array(same_object), np.array(bg_changed)


def test_intervention_changes_only_the_background(scm, env):
    observed = scm.observe(env, 40, np.random.default_rng(3))
    intervened = scm.intervene(env, 40, np.random.default_rng(3), location="mountain")
    assert (intervened["location"] == "mountain").all()
    for column in ("breed", "seed", "u_loc", "env"):
        assert (observed[column] == intervened[column]).all()
    same_object, bg_changed = _split_pixels(scm, observed, scm.render(observed), scm.render(intervened))
    assert same_object.all()
    moved = (observed["location"] != "mountain").to_numpy()
    assert moved.all()  # mountain is not a background of o2o_easy's training environment
    assert (bg_changed > 0.5).all()


def test_counterfactual_pairs_share_the_object(scm, env):
    units = scm.observe(env, 12, np.random.default_rng(5))
    factual = scm.render(units)
    for location in LOCATIONS:
        twin = SpawriousSCM.counterfactual(units, location)
        assert [scm.object_of(b, s) for b, s in zip(units["breed"], units["seed"])] == \
            [scm.object_of(b, s) for b, s in zip(twin["breed"], twin["seed"])]
        images = scm.render(twin)
        same_object, bg_changed = _split_pixels(scm, units, factual, images)
        assert same_object.all()
        unchanged = (units["location"] == location).to_numpy()
        assert (bg_changed[unchanged] == 0).all() and (bg_changed[~unchanged] > 0.5).all()


def test_objects_differ_between_units_and_breeds(scm, env):
    units = scm.observe(env, 30, np.random.default_rng(0))
    specs = [scm.object_of(b, s) for b, s in zip(units["breed"], units["seed"])]
    assert len({(o.cx, o.cy) for o in specs}) == len(specs)  # pose noise
    # two shapes and four colours: every breed is its own (shape, colour), each shape drawn at the same area
    assert {(o.breed, o.shape) for o in specs} == {(b, p.shape) for b, p in BREEDS.items()}
    assert len({(p.shape, p.rgb) for p in BREEDS.values()}) == len(BREEDS)
    areas = {o.shape: object_mask(dataclasses.replace(o, cx=0.5, cy=0.5, angle=0.0, scale=0.3), 64).mean()
             for o in specs}
    assert max(areas.values()) - min(areas.values()) < 0.02


@pytest.mark.parametrize("size", [8, 48])
def test_image_size_is_configurable(size, env):
    scm = SpawriousSCM(RenderSettings(image_size=size))
    images = scm.render(scm.observe(env, 3, np.random.default_rng(0)))
    assert images.shape == (3, size, size, 3) and images.dtype == np.uint8


def test_prompt_image_source_gets_breed_and_location(env):
    prompts = []

    def fake_model(prompt, seed, size):
        prompts.append((prompt, seed))
        return np.full((size * 2, size * 2, 3), 7, dtype=np.uint8)  # wrong size on purpose: the adapter resizes

    scm = SpawriousSCM(RenderSettings(image_size=16), PromptImageSource(fake_model))
    units = scm.observe(env, 2, np.random.default_rng(0))
    images = scm.render(SpawriousSCM.counterfactual(units, "snow"))
    assert images.shape == (2, 16, 16, 3) and (images == 7).all()
    assert prompts[0][0] == f"a photo of a {units['breed'][0]} dog in the snow"
