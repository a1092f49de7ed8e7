"""DVC stage spawrious_generate: render every split of the grid from the SCM, check its manifest with Great
Expectations, write data/spawrious/<split>/ and a counterfactual preview."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from latlab.tracking import stage_run
from latlab.vision.benchmark import generate_split, save_split
from latlab.config import load_params
from latlab.vision.splits import split_definition
from latlab.vision.validation import validate_manifest, write_summary

DATA = Path("data/spawrious")
METRICS = Path("metrics/spawrious_generate.json")
PREVIEW = Path("plots/spawrious/counterfactuals.png")


def counterfactual_preview(counterfactual: np.ndarray, labels: np.ndarray, path: Path, zoom: int = 3) -> None:
    """One test image per class (rows) on each of the six backgrounds (columns)."""
    rows = [counterfactual[int(np.argmax(labels == c))] for c in np.unique(labels)]  # each [6, H, W, 3]
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(grid)
    image.resize((grid.shape[1] * zoom, grid.shape[0] * zoom), Image.NEAREST).save(path)


def main() -> None:
    params = load_params()
    cfg, tracking = params.spawrious, params.tracking
    metrics, failed, first = {}, [], None
    with stage_run(tracking, "spawrious_generate", cfg.data.model_dump(mode="json") | {"splits": cfg.splits}) as run:
        for name in cfg.splits:
            data = generate_split(name, cfg.data)
            first = data if first is None else first
            save_split(data, DATA / name)
            summary = validate_manifest(data.manifest, split_definition(name), cfg.data.per_env_total,
                                        cfg.data.test_per_group)
            write_summary(summary, DATA / name / "validation.json")
            run.log_artifact(DATA / name / "validation.json", artifact_path=f"validation/{name}")
            metrics[name] = {"train_images": int(data.part("train").sum()), "test_images": int(data.part("test").sum()),
                             "groups": len(summary["groups"]), "gx_success": int(summary["success"])}
            if not summary["success"]:
                failed.append(name)
        counterfactual_preview(first.counterfactual, first.manifest[first.part("test")]["label"].to_numpy(), PREVIEW)
        run.log_artifact(PREVIEW)
        run.log_metrics(metrics)
    METRICS.parent.mkdir(parents=True, exist_ok=True)
    METRICS.write_text(json.dumps(metrics, indent=2))
    if failed:
        raise SystemExit(f"spawrious_generate: Great Expectations manifest check failed for {', '.join(failed)} "
                         f"(see {DATA}/<split>/validation.json)")


if __name__ == "__main__":
    main()
