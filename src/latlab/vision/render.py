"""Procedural CPU rendering of Spawrious-style images (numpy only) and the pluggable image-source protocol.

The paper's images come from a text-to-image model (Lynch et al. 2023, §3); this module stands in for it offline:
a breed-specific foreground object (shape, colour, texture, pose) composited with a hard mask over one of six
procedural backgrounds. Because the mask is hard and every noise term is drawn from its own seed, re-rendering the
same object on another background changes exactly the pixels outside the mask, which is what makes counterfactual
pairs exact. Users with a local text-to-image model plug it in through `PromptImageSource`.
Hand-written: no maintained library renders this kind of controlled two-factor image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from latlab.vision.splits import CLASSES, LOCATIONS


@dataclass(frozen=True)
class ObjectSpec:
    """The foreground object, the output of the SCM's object mechanism."""

    breed: str
    shape: str  # "box" | "disk" for the breeds (BREEDS); "triangle" | "bar" are drawn too
    rgb: tuple[float, float, float]
    texture: str  # "plain" | "stripes" | "diagonal" | "checker" | "spots"
    texture_freq: float
    texture_phase: float
    cx: float
    cy: float
    scale: float
    angle: float


@dataclass(frozen=True)
class BreedPrototype:
    shape: str
    rgb: tuple[float, float, float]
    texture: str


# The breeds sit on a 2x2 grid of colour cues (issue 18 calibration, docs/spawrious.md, variant "vC"): brightness
# splits {bulldog, dachshund} (dark, box) from {labrador, corgi} (light, disk), the M2M class pairs; hue splits
# {bulldog, corgi} (warm) from {dachshund, labrador} (grey). The Spawrious splits then differ the way the paper's
# names say: O2O-Easy's swapped pairs differ in brightness and hue, O2O-Medium's conflicts in brightness only,
# O2O-Hard's cycle has two hue-only conflicts, so a weak cue decides Hard. One texture and one area for every
# silhouette, so neither object size nor texture is a breed cue (with four areas only the two small breeds failed).
# Colours overlap the background palette (brown on dirt and desert, grey on mountain), as in photographs.
BREEDS: dict[str, BreedPrototype] = {
    "bulldog": BreedPrototype("box", (0.50, 0.30, 0.14), "checker"),
    "corgi": BreedPrototype("disk", (0.96, 0.70, 0.42), "checker"),
    "dachshund": BreedPrototype("box", (0.34, 0.32, 0.32), "checker"),
    "labrador": BreedPrototype("disk", (0.80, 0.78, 0.74), "checker"),
}
# silhouette areas in units of the half-width squared; every silhouette is scaled to the disk's area
_UNIT_AREA = {"box": 2.56, "triangle": 1.6, "bar": 1.6, "disk": 0.64 * np.pi}
assert tuple(sorted(BREEDS)) == CLASSES


@dataclass(frozen=True)
class RenderSettings:
    image_size: int = 32
    object_scale: float = 0.42  # object half-width as a share of the image, before pose noise
    colour_noise: float = 0.10
    pixel_noise: float = 0.03


class ImageSource(Protocol):
    """Anything that turns (object, background, noise) into an RGB image [size, size, 3] uint8."""

    def render(self, obj: ObjectSpec, location: str, background_seed: int, pixel_seed: int,
               settings: RenderSettings) -> np.ndarray: ...


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(size) + 0.5) / size
    return np.meshgrid(coords, coords, indexing="ij")  # (yy, xx), each [size, size] in (0, 1)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Blocky value noise upsampled to [size, size], values in [0, 1)."""
    coarse = rng.random((cells, cells))
    reps = -(-size // cells)
    return np.kron(coarse, np.ones((reps, reps)))[:size, :size]


def _fill(rgb: tuple[float, float, float], shade: np.ndarray) -> np.ndarray:
    return np.asarray(rgb)[None, None, :] * shade[..., None]  # [H, W, 3]


def background(location: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One of the six backgrounds as float RGB [size, size, 3] in [0, 1]; layout and texture vary with `rng`."""
    yy, xx = _grid(size)
    phase, tilt = rng.random() * 2 * np.pi, rng.uniform(-0.5, 0.5)
    if location == "desert":
        dunes = 0.85 + 0.15 * np.sin(2 * np.pi * (3 * yy + tilt * xx + 0.3 * np.sin(2 * np.pi * xx)) + phase)
        img = _fill((0.93, 0.78, 0.50), dunes)
    elif location == "jungle":
        # pale foliage: on a dark jungle a light object was read as the jungle's breed (calibration, issue 18)
        leaves = 0.8 + 0.3 * _smooth_noise(rng, size, 6)
        img = _fill((0.55, 0.78, 0.55), leaves)
    elif location == "dirt":
        # light brown ground, close to desert in colour and told apart by texture (speckle, not dunes): in the
        # paper's photos both are brown ground. Their likeness is what makes the easy splits easy: O2O-Easy swaps
        # bulldog and labrador between desert and dirt, M2M-Easy puts them in opposite pairs (calibration, issue 18)
        speckle = 0.8 + 0.3 * rng.random((size, size))
        img = _fill((0.82, 0.64, 0.42), speckle)
    elif location == "mountain":
        peaks = rng.uniform(0.1, 0.9, size=3)
        ridge = 0.75 - 0.45 * np.max(np.clip(1 - 3 * np.abs(xx[None] - peaks[:, None, None]), 0, 1), axis=0)
        img = np.where((yy > ridge + 0.02 * tilt)[..., None], _fill((0.50, 0.50, 0.54), 0.9 + 0.1 * yy),
                       _fill((0.55, 0.72, 0.92), np.ones_like(yy)))
    elif location == "snow":
        drifts = 0.92 + 0.08 * _smooth_noise(rng, size, 4)
        img = _fill((0.95, 0.97, 1.00), drifts)
        img[..., :2] -= 0.08 * (rng.random((size, size)) < 0.05)[..., None]
    elif location == "beach":
        horizon, shore = 0.3 + 0.1 * rng.random(), 0.55 + 0.1 * rng.random()
        sky, sea, sand = (0.70, 0.85, 0.98), (0.10, 0.40, 0.75), (0.95, 0.88, 0.65)
        waves = 0.9 + 0.1 * np.sin(2 * np.pi * 8 * xx + phase)
        img = np.where((yy < horizon)[..., None], _fill(sky, np.ones_like(yy)),
                       np.where((yy < shore + 0.03 * np.sin(2 * np.pi * 2 * xx + phase))[..., None],
                                _fill(sea, waves), _fill(sand, np.ones_like(yy))))
    else:
        raise ValueError(f"unknown location {location!r}; expected one of {LOCATIONS}")
    return np.clip(img, 0, 1)


def object_mask(obj: ObjectSpec, size: int) -> np.ndarray:
    """Boolean [size, size] mask of the object's silhouette (hard edges, so masks never blend with backgrounds)."""
    yy, xx = _grid(size)
    cos, sin = np.cos(obj.angle), np.sin(obj.angle)
    # object frame: u along the object's axis, v across it, both in units of the object's half-width
    half = obj.scale * np.sqrt(_UNIT_AREA["disk"] / _UNIT_AREA[obj.shape])
    u = ((xx - obj.cx) * cos + (yy - obj.cy) * sin) / half
    v = (-(xx - obj.cx) * sin + (yy - obj.cy) * cos) / half
    if obj.shape == "box":
        return (np.abs(u) < 0.8) & (np.abs(v) < 0.8)
    if obj.shape == "triangle":
        return (v < 0.7) & (v > -0.9 + 1.6 * np.abs(u))
    if obj.shape == "bar":
        return (np.abs(u) < 1.0) & (np.abs(v) < 0.4)
    if obj.shape == "disk":
        return u ** 2 + v ** 2 < 0.8 ** 2
    raise ValueError(f"unknown shape {obj.shape!r}")


def object_pixels(obj: ObjectSpec, size: int) -> np.ndarray:
    """Textured object colour [size, size, 3]; only meaningful under `object_mask`."""
    yy, xx = _grid(size)
    f, ph = obj.texture_freq, obj.texture_phase
    if obj.texture == "plain":
        shade = np.ones_like(xx)
    elif obj.texture == "stripes":
        shade = 0.75 + 0.25 * np.sign(np.sin(2 * np.pi * f * xx + ph))
    elif obj.texture == "diagonal":
        shade = 0.75 + 0.25 * np.sign(np.sin(2 * np.pi * f * (xx + yy) + ph))
    elif obj.texture == "checker":
        shade = 0.8 + 0.2 * np.sign(np.sin(2 * np.pi * f * xx + ph) * np.sin(2 * np.pi * f * yy + ph))
    elif obj.texture == "spots":
        shade = np.where(np.sin(2 * np.pi * f * xx + ph) * np.sin(2 * np.pi * f * yy) > 0.6, 0.45, 1.0)
    else:
        raise ValueError(f"unknown texture {obj.texture!r}")
    return _fill(obj.rgb, shade)


class ProceduralSource:
    """The default image source: numpy backgrounds and objects, hard-mask compositing, Gaussian pixel noise."""

    def render(self, obj: ObjectSpec, location: str, background_seed: int, pixel_seed: int,
               settings: RenderSettings) -> np.ndarray:
        size = settings.image_size
        img = background(location, size, np.random.default_rng(background_seed))
        mask = object_mask(obj, size)
        img = np.where(mask[..., None], object_pixels(obj, size), img)
        img = img + settings.pixel_noise * np.random.default_rng(pixel_seed).standard_normal(img.shape)
        return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


class PromptImageSource:
    """Adapter for a local text-to-image model: `generate(prompt, seed, size) -> array or PIL image`.

    e.g. a diffusers pipeline: `PromptImageSource(lambda p, s, n: pipe(p, generator=torch.Generator().manual_seed(s),
    height=n, width=n).images[0])`. Counterfactuals keep the seed and change only the location word, so they are
    approximate: the model, not a mask, decides what else changes.
    """

    template = "a photo of a {breed} dog in the {location}"

    def __init__(self, generate: Callable[[str, int, int], Any], template: str | None = None):
        self.generate = generate
        self.template = template or self.template

    def render(self, obj: ObjectSpec, location: str, background_seed: int, pixel_seed: int,
               settings: RenderSettings) -> np.ndarray:
        prompt = self.template.format(breed=obj.breed, location=location)
        image = np.asarray(self.generate(prompt, pixel_seed, settings.image_size))
        if image.shape != (settings.image_size, settings.image_size, 3):
            from PIL import Image

            resized = Image.fromarray(image.astype(np.uint8)).convert("RGB")
            image = np.asarray(resized.resize((settings.image_size, settings.image_size)))
        return image.astype(np.uint8)
