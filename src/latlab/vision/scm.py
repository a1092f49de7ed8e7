"""An explicit structural causal model of Spawrious-style data, with observational, interventional and
counterfactual sampling (the causal generative modelling view of Kaddour et al. 2022; splits of Lynch et al. 2023).

Variables and mechanisms (U_* exogenous, independent):
    breed     := f_B(U_B)                        uniform over the four classes (or fixed by a split's design)
    object    := f_O(breed, U_O)                 shape, colour, texture from the breed; colour jitter, pose from U_O
    location  := f_L(breed, environment, U_L)    inverse CDF of the environment's breed -> background distribution
    image     := render(object, location, U_bg, U_px)
Every unit stores (breed, environment, location, U_L, seed); the seed determines U_O, U_bg and U_px, so a unit table
(a pandas DataFrame, also the image manifest) fixes every image exactly. A counterfactual keeps the unit's noise and
sets location := b; an intervention do(location = b) replaces f_L for freshly drawn units.
Hand-written: causal libraries (DoWhy, pgmpy) model tabular variables, not an image renderer as a mechanism.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from latlab.vision.render import BREEDS, ImageSource, ObjectSpec, ProceduralSource, RenderSettings
from latlab.vision.splits import CLASSES, Environment, Group

UNIT_COLUMNS = ("part", "env", "breed", "label", "location", "u_loc", "seed")
_SEED_HIGH = 2 ** 62


@dataclass(frozen=True)
class Noise:
    """Exogenous noise of one unit besides U_B and U_L, derived from its seed."""

    u_obj: np.ndarray  # [8] uniforms: colour jitter (3), centre (2), scale, angle, texture phase
    background_seed: int
    pixel_seed: int


def noise_from_seed(seed: int) -> Noise:
    rng = np.random.default_rng(int(seed))
    u_obj = rng.random(8)
    background_seed, pixel_seed = (int(s) for s in rng.integers(0, _SEED_HIGH, size=2))
    return Noise(u_obj, background_seed, pixel_seed)


def object_mechanism(breed: str, noise: Noise, settings: RenderSettings) -> ObjectSpec:
    proto = BREEDS[breed]
    u = noise.u_obj
    rgb = tuple(float(np.clip(c + settings.colour_noise * (2 * j - 1), 0, 1)) for c, j in zip(proto.rgb, u[:3]))
    scale = settings.object_scale * (0.8 + 0.4 * u[5])
    # keep the object inside the frame; pose noise is what a photo of a dog varies in most
    margin = min(0.5, scale * 0.9)
    cx, cy = (margin + (1 - 2 * margin) * w for w in u[3:5])
    return ObjectSpec(breed=breed, shape=proto.shape, rgb=rgb, texture=proto.texture, texture_freq=4.0,
                      texture_phase=float(2 * np.pi * u[7]), cx=float(cx), cy=float(cy), scale=float(scale),
                      angle=float((u[6] - 0.5) * np.pi / 3))


def location_mechanism(environment: Environment, breed: str, u_loc: float) -> str:
    options = environment.locations[breed]
    edges = np.cumsum([p for _, p in options])
    index = int(np.searchsorted(edges, u_loc, side="right"))
    return options[min(index, len(options) - 1)][0]


def _u_loc_interval(environment: Environment, breed: str, location: str) -> tuple[float, float]:
    low = 0.0
    for name, p in environment.locations[breed]:
        if name == location:
            return low, low + p
        low += p
    raise ValueError(f"{location!r} has probability 0 for {breed!r} in environment {environment.name!r}")


class SpawriousSCM:
    def __init__(self, settings: RenderSettings = RenderSettings(), source: ImageSource | None = None):
        self.settings = settings
        self.source = source or ProceduralSource()

    def object_of(self, breed: str, seed: int) -> ObjectSpec:
        return object_mechanism(breed, noise_from_seed(seed), self.settings)

    def render_unit(self, breed: str, location: str, seed: int) -> np.ndarray:
        noise = noise_from_seed(seed)
        obj = object_mechanism(breed, noise, self.settings)
        return self.source.render(obj, location, noise.background_seed, noise.pixel_seed, self.settings)

    def render(self, units: pd.DataFrame) -> np.ndarray:
        """Images [n, size, size, 3] uint8 of a unit table, in row order."""
        size = self.settings.image_size
        out = np.empty((len(units), size, size, 3), dtype=np.uint8)
        for i, (breed, location, seed) in enumerate(zip(units["breed"], units["location"], units["seed"])):
            out[i] = self.render_unit(breed, location, int(seed))
        return out

    # --- sampling -------------------------------------------------------------------------------------------
    def observe(self, environment: Environment, n: int, rng: np.random.Generator) -> pd.DataFrame:
        """n units from the observational distribution of one environment."""
        breeds, u_loc, seeds = self._draw(n, rng)
        locations = [location_mechanism(environment, b, u) for b, u in zip(breeds, u_loc)]
        return _units(environment, breeds, locations, u_loc, seeds)

    def intervene(self, environment: Environment, n: int, rng: np.random.Generator, location: str) -> pd.DataFrame:
        """n units under do(location = `location`): f_L is replaced; breed and noise are drawn as in `observe`,
        so the same rng state yields the same breeds and objects as the observational draw."""
        breeds, u_loc, seeds = self._draw(n, rng)
        return _units(environment, breeds, [location] * n, u_loc, seeds)

    @staticmethod
    def counterfactual(units: pd.DataFrame, location: str) -> pd.DataFrame:
        """The same units (same exogenous noise, hence the same object and pixel noise) had the location been b."""
        return units.assign(location=location)

    def sample_groups(self, groups: Iterable[Group], environments: dict[str, Environment],
                      rng: np.random.Generator) -> pd.DataFrame:
        """Exact per-group counts: breed is fixed by design and U_L is drawn uniformly from the interval that
        f_L maps to the group's location, so every unit still satisfies location == f_L(breed, env, U_L)."""
        frames = []
        for group in groups:
            env = environments[group.env]
            low, high = _u_loc_interval(env, group.breed, group.location)
            u_loc = rng.uniform(low, high, size=group.count)
            seeds = rng.integers(0, _SEED_HIGH, size=group.count)
            frames.append(_units(env, [group.breed] * group.count, [group.location] * group.count, u_loc, seeds))
        return pd.concat(frames, ignore_index=True)

    @staticmethod
    def _draw(n: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray, np.ndarray]:
        u_breed, u_loc = rng.random(n), rng.random(n)
        seeds = rng.integers(0, _SEED_HIGH, size=n)
        breeds = [CLASSES[int(u * len(CLASSES))] for u in u_breed]
        return breeds, u_loc, seeds


def _units(environment: Environment, breeds, locations, u_loc, seeds) -> pd.DataFrame:
    return pd.DataFrame({
        "part": environment.part, "env": environment.name, "breed": list(breeds),
        "label": [CLASSES.index(b) for b in breeds], "location": list(locations),
        "u_loc": np.asarray(u_loc, dtype=float), "seed": np.asarray(seeds, dtype=np.int64),
    }, columns=list(UNIT_COLUMNS))
