"""DVC stage spawrious_train: one method x one split per invocation (dvc.yaml expands the grid with `matrix`).

    python -m stages.spawrious_train --method groupdro --split o2o_easy
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import get_args

from safetensors.torch import save_file

from latlab.config import MethodName, Params
from latlab.tracking import stage_run
from latlab.vision.benchmark import evaluate, heldout_scores, load_split, training_data
from latlab.vision.methods import holdout_split, train_method
from latlab.vision.metrics import select_checkpoints
from stages.common import run_stage, stage_done

DATA = Path("data/spawrious")
MODELS = Path("models/spawrious")
METRICS = Path("metrics/spawrious_train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, choices=get_args(MethodName))
    parser.add_argument("--split", required=True, help="a split of spawrious.splits: o2o_easy ... m2m_hard, dial_<p>")
    return parser.parse_args(argv)


def train(params: Params, method: str, split: str) -> None:
    cfg, tracking = params.spawrious, params.tracking
    if split not in cfg.splits:
        raise ValueError(f"--split {split!r} is not in spawrious.splits {cfg.splits} (spawrious_generate renders those)")
    data = load_split(DATA / split, split)
    train_set, group_vocab = training_data(data)
    refit_set = select_set = None
    if cfg.train.holdout_fraction > 0:
        # fixed by the data seed, so every method and training seed sees the same held-out images
        train_set, heldout = holdout_split(train_set, cfg.train.holdout_fraction, cfg.data.seed)
        refit_set, select_set = holdout_split(heldout, 0.5, cfg.data.seed)
    checkpoints: list[dict] = []
    tests: dict[int, dict] = {}  # step -> full test result; the final one is the run's test result

    def checkpoint(step: int, model) -> None:
        if select_set is not None:
            tests[step] = test = evaluate(model, data, "test")
            checkpoints.append({"step": step, "val": heldout_scores(model, select_set),
                                "test": {k: v for k, v in test.items() if k != "groups"}})
    out_dir = MODELS / split / method
    out_dir.mkdir(parents=True, exist_ok=True)
    run_params = {"method": method, "split": split, "train": cfg.train.model_dump(mode="json"),
                  "hparams": cfg.hparams.model_dump(mode="json")}
    with stage_run(tracking, f"spawrious_train@{method}-{split}", run_params,
                   extra_tags={"track": "spawrious", "method": method, "split": split}) as run:
        start = time.perf_counter()
        model = train_method(method, train_set, cfg.train, cfg.hparams, len(group_vocab), log=run.log_metrics,
                             heldout=refit_set, checkpoint=checkpoint, checkpoint_every=cfg.train.select_every)
        seconds = time.perf_counter() - start
        test = tests.get(cfg.train.steps) or evaluate(model, data, "test")  # the last checkpoint is this model
        train_fit = evaluate(model, data, "train")
        selection = {rule: {"step": row["step"], "val": row["val"], "test": row["test"]}
                     for rule, row in select_checkpoints(checkpoints).items()} if checkpoints else {}
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / "model.safetensors"))
        card = {"method": method, "split": split, "model": cfg.train.model, "width": cfg.train.width,
                "train_groups": group_vocab, "run_id": run.run_id}
        (out_dir / "model.json").write_text(json.dumps(card, indent=2))
        result = {"method": method, "split": split, "train_seconds": round(seconds, 2),
                  "test": test, "train": {k: v for k, v in train_fit.items() if k != "groups"},
                  "selection": selection, "checkpoints": checkpoints}
        run.log_metrics({"test": {k: v for k, v in test.items() if k != "groups"},
                         "train": result["train"], "train_seconds": seconds,
                         "selected": {rule: row["test"] for rule, row in selection.items()}})
        for row in test["groups"]:
            run.log_metrics({f"test_group.{row['group']}": row["accuracy"]})
        run.log_artifact(out_dir)
        card["registered_version"] = run.register_torch_model(
            model.eval(), f"latlab-spawrious-{split}-{method}", train_set.x[:1].numpy(),
            tags={"made_by": f"{method} on {split}", "worst_group_acc": test["worst_group_accuracy"]})
        (out_dir / "model.json").write_text(json.dumps(card, indent=2))
    metrics_path = METRICS / split / f"{method}.json"
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(result, indent=2))
    stage_done(f"spawrious_train@{method}-{split}", [out_dir, metrics_path],
               {"worst_group_accuracy": test["worst_group_accuracy"]})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_stage(f"spawrious_train@{args.method}-{args.split}", lambda params: train(params, args.method, args.split))


if __name__ == "__main__":
    main()
