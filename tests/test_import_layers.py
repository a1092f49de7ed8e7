"""Imports inside src/latlab point down the layers of docs/layers.md: a module imports its own package or a package in a
strictly lower layer, never a higher one, and the library never imports the pipeline around it (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.stage_deps import ROOT, module_imports

# Lowest first. A package may import its own modules and the packages of strictly lower layers only, so two packages
# of one layer stay independent of each other.
LAYERS = (
    ("config", "env"),                     # foundation: no latlab imports
    ("parallel", "tracking", "profiles"),  # infrastructure on config: process launch (models, training), MLflow
                                           # runs (stages), params profiles (flows)
    ("data",),                             # records I/O, loaders, validation
    ("world",),                            # the synthetic world and its curricula, written as data records
    ("models",),
    ("attacks",),
    ("training",),
    ("evals",),
    ("interp",),
    ("report",),
    ("check",),                            # the params check: schema, model source and depth (python -m latlab.check)
)
# Beside the stack (the Spawrious vision track): may import only these, and nothing in the stack imports it.
SIDE_PACKAGES = {"vision": {"config", "env", "data", "models"}}
# The library is imported by the pipeline, never the other way round.
FORBIDDEN = {"stages", "flows", "prefect", "dvc"}

LEVEL = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def layer_of(module: str) -> str | None:
    """`latlab.attacks.gcg` -> `attacks`, `latlab.config` -> `config`; None for other modules and bare `latlab`."""
    parts = module.split(".")
    return parts[1] if parts[0] == "latlab" and len(parts) > 1 else None


def describe(layer: str) -> str:
    return f"{layer} (layer {LEVEL[layer]})" if layer in LEVEL else f"{layer} (beside the layers)"


def import_error(own: str, target: str) -> str | None:
    """Why a module of layer `own` may not import layer `target`; None if it may."""
    for layer in (own, target):
        if layer not in LEVEL and layer not in SIDE_PACKAGES:
            return f"{layer} is in no layer (add it to LAYERS in tests/test_import_layers.py and docs/layers.md)"
    if own in SIDE_PACKAGES:
        allowed = target in SIDE_PACKAGES[own]
    else:
        allowed = target not in SIDE_PACKAGES and LEVEL[target] < LEVEL[own]
    return None if allowed else f"{describe(own)} may not import {describe(target)}"


def layer_violations(root: Path) -> list[str]:
    """One line per import in root/src/latlab that breaks the layering."""
    found = []
    for path in sorted((root / "src").rglob("*.py")):
        parts = path.relative_to(root / "src").with_suffix("").parts
        own = layer_of(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        name = path.relative_to(root).as_posix()
        for module in sorted(module_imports(path, root)):
            target = layer_of(module)
            if module.split(".")[0] in FORBIDDEN:
                found.append(f"{name} imports {module}: the library must not import {', '.join(sorted(FORBIDDEN))}")
            elif own and target and target != own and (error := import_error(own, target)):
                found.append(f"{name} imports {module}: {error}")
    return found


def test_latlab_imports_point_down_the_layers():
    if violations := layer_violations(ROOT):
        pytest.fail("upward imports in src/latlab (see docs/layers.md):\n" + "\n".join(violations), pytrace=False)


def test_layer_checker_catches_an_upward_import(tmp_path):
    files = {
        "__init__.py": "from latlab.env import x\n",
        "config.py": "",
        "env.py": "",
        "data/__init__.py": "",
        "data/records.py": "import json\nfrom latlab.config import Params\n",  # down: fine
        "models/__init__.py": "",
        "models/loading.py": "from latlab import parallel\n"  # down: fine
                             "def f():\n    from ..training import loop\n",  # up, relative, inside a function
        "parallel.py": "",
        "training/__init__.py": "",
        "training/loop.py": "from latlab.models.loading import f\nfrom . import sft\n",  # down and own package
        "training/sft.py": "",
        "vision/__init__.py": "",
        "vision/methods.py": "from latlab.models import loading\nfrom latlab.training.loop import g\n",
        "world/__init__.py": "import prefect\n",
        "newpkg/__init__.py": "",
        "newpkg/thing.py": "from latlab.config import Params\n",
    }
    for name, text in files.items():
        (tmp_path / "src/latlab" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src/latlab" / name).write_text(text)
    assert layer_violations(tmp_path) == [
        "src/latlab/models/loading.py imports latlab.training: models (layer 4) may not import training (layer 6)",
        "src/latlab/models/loading.py imports latlab.training.loop: models (layer 4) may not import training "
        "(layer 6)",
        "src/latlab/newpkg/thing.py imports latlab.config: newpkg is in no layer (add it to LAYERS in "
        "tests/test_import_layers.py and docs/layers.md)",
        "src/latlab/vision/methods.py imports latlab.training.loop: vision (beside the layers) may not import "
        "training (layer 6)",
        "src/latlab/world/__init__.py imports prefect: the library must not import dvc, flows, prefect, stages",
    ]
