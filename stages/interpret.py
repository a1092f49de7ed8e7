"""DVC stage `interpret`: ACDC/EAP checked on a planted circuit, steering-vector reliability on the base model,
and, for every evaluated model, linear-probe latent signal of each behaviour against its behaviour rate."""

from __future__ import annotations

import json

from latlab.config import Params, section_dict
from latlab.data.records import load_world
from latlab.interp.circuits import validate_on_planted_circuit
from latlab.interp.persistence import (latent_signal, persistence_markdown, persistence_table, plot_persistence,
                                       probe_datasets)
from latlab.interp.steering import ChatEncode, from_records, steering_reliability
from latlab.models.hooks import decoder_layers
from latlab.models.loading import load_saved
from latlab.tracking import stage_run
from stages.common import METRICS_DIR, MODELS_DIR, PLOTS_DIR, REPORTS_DIR, WORLD_DIR, run_stage, write_metrics

OUT = PLOTS_DIR / "interpret"


def interpret(params: Params) -> None:
    cfg = params.interpret
    world = load_world(WORLD_DIR)
    rates = json.loads((METRICS_DIR / "evaluate.json").read_text())
    metrics: dict = {"acdc_planted": validate_on_planted_circuit(cfg.acdc, OUT / "acdc", seed=cfg.seed)}
    datasets = probe_datasets(world, params.world.backdoor.trigger, max_items=200, seed=cfg.seed)
    signals = {}
    for role in params.evaluate.models:
        model, tokenizer = load_saved(MODELS_DIR / role, params.model.device, params.model.dtype)
        layers = list(cfg.probes.layers) or list(range(len(decoder_layers(model))))
        signals[role] = latent_signal(model, tokenizer, datasets, layers, cfg.probes.test_fraction, cfg.seed)
        if role == "base":
            steer = cfg.steering
            result = steering_reliability(model, ChatEncode(tokenizer), from_records(world["concepts"]),
                                          steer.layer, OUT / "steering", steer.multipliers, steer.position,
                                          steer.persona_positive, steer.persona_negative, name="base_persona")
            metrics["steering_base"] = {k: {kk: vv for kk, vv in v.items() if kk != "slopes"}
                                        if isinstance(v, dict) else v for k, v in result.items()}
    rows = persistence_table(rates, signals)
    metrics["persistence"] = {f"{r['model']}.{r['behaviour']}": {"behaviour_rate": r["behaviour_rate"],
                                                                  "probe_accuracy": r["probe_accuracy"]}
                              for r in rows}
    plot_persistence(rows, OUT / "persistence.png")
    REPORTS_DIR.mkdir(parents=True, exist_ok=True)
    (REPORTS_DIR / "persistence.md").write_text(persistence_markdown(rows))
    write_metrics("interpret", metrics)
    with stage_run(params.tracking, "interpret", section_dict(params, "interpret")) as run:
        run.log_metrics(metrics)
        run.log_artifact(OUT, "interpret")
        run.log_artifact(REPORTS_DIR / "persistence.md", "interpret")


def main() -> None:
    run_stage("interpret", interpret)


if __name__ == "__main__":
    main()
