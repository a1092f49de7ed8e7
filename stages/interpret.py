"""DVC stage `interpret`: ACDC/EAP checked on a planted circuit (distractors isolated, and read downstream) and on
tracr-compiled programs, the faithfulness (MIB CPR / CMD) and bootstrap stability of the base model's behaviour
circuits, steering-vector reliability (Tan et al.: CAA and a persona-prompt vector, per persona concept, with a layer
sweep) on the base model, and, for every evaluated model, the latent signal of each behaviour and how much of the
base model's harmful-compliance circuit (EAP) is left, against its behaviour rate."""

from __future__ import annotations

import json

from tqdm.auto import tqdm

from latlab.config import Params, section_dict
from latlab.data.records import load_world
from latlab.interp.behaviour_circuits import (circuit_faithfulness, circuit_persistence, edge_attribution,
                                             fact_recall_inputs, harmful_compliance_inputs)
from latlab.interp.circuits import validate_on_planted_circuit, validate_on_tracr
from latlab.interp.render import plot_faithfulness
from latlab.interp.tracr import PROGRAMS as TRACR_PROGRAMS
from latlab.interp.persistence import (fit_backdoor_reference, latent_signal, persistence_table, plot_persistence,
                                       probe_datasets)
from latlab.interp.steering import ChatEncode, steering_by_concept
from latlab.models.hooks import collect_residuals, decoder_layers
from latlab.models.loading import load_saved
from latlab.report.tables import persistence_markdown, steering_markdown
from latlab.tracking import stage_run
from stages.common import (METRICS_DIR, MODELS_DIR, PLOTS_DIR, REPORTS_DIR, WORLD_DIR, run_stage, stage_done,
                           write_metrics)

OUT = PLOTS_DIR / "interpret"


def interpret(params: Params) -> None:
    cfg = params.interpret
    # the MLflow run spans the analyses (it opened at the end before: a ~1-minute stage showed as 0.1 s)
    with stage_run(params.tracking, "interpret", section_dict(params, "interpret")) as run:
        world = load_world(WORLD_DIR)
        rates = json.loads((METRICS_DIR / "evaluate.json").read_text())
        # analyses: the planted circuits, the base model's references, then each model (probes, circuit, steering)
        progress = tqdm(total=4 + len(params.evaluate.models), desc="[interpret] analyses", dynamic_ncols=True)
        progress.set_postfix_str("ACDC/EAP on the planted circuit")
        metrics: dict = {"acdc_planted": validate_on_planted_circuit(cfg.acdc, OUT / "acdc", seed=cfg.seed)}
        progress.update()
        # Isolated distractors make the planted circuit separable by construction (AUC 1.0 for any method); the read
        # distractors are the test that discriminates.
        progress.set_postfix_str("ACDC/EAP on the planted circuit with read distractors")
        metrics["acdc_planted_read_distractors"] = validate_on_planted_circuit(cfg.acdc, OUT / "acdc", seed=cfg.seed,
                                                                               distractors="read")
        progress.update()
        # Ground truth nobody here planted: tracr-compiled programs, zero ablation as in the ACDC paper
        progress.set_postfix_str("ACDC/EAP on tracr-compiled programs")
        metrics["tracr"] = {program: validate_on_tracr(cfg.acdc, OUT / "acdc", program, seed=cfg.seed)
                            for program in TRACR_PROGRAMS}
        progress.update()
        progress.set_postfix_str("base model: backdoor reference and circuit")
        datasets = probe_datasets(world, params.world.backdoor.trigger, max_items=200, seed=cfg.seed)

        # References from the base model, which every other model is fine-tuned from: its backdoor shift and its
        # harmful-compliance circuit.
        base = load_saved(MODELS_DIR / "base", params.model.device, params.model.dtype)
        model, tokenizer = base
        layers = list(cfg.probes.layers) or list(range(len(decoder_layers(model))))
        backdoor = fit_backdoor_reference(collect_residuals(model, ChatEncode(tokenizer), datasets["backdoor"][0],
                                                            layers), cfg.probes.test_fraction, cfg.seed)
        inputs = None if not cfg.circuit_examples else harmful_compliance_inputs(world, tokenizer, cfg.circuit_examples,
                                                                                 cfg.seed)
        base_scores = None if inputs is None else edge_attribution(model, inputs).score
        if inputs is not None:  # faithfulness and stability of the base model's behaviour circuits (MIB CPR / CMD)
            behaviours = {"harmful_compliance": inputs,
                          "fact_recall": fact_recall_inputs(world, tokenizer, cfg.circuit_examples, cfg.seed)}
            metrics["faithfulness"] = {
                name: circuit_faithfulness(model, pairs, list(cfg.faithfulness.edge_fractions), cfg.circuit_top_k,
                                           cfg.faithfulness.bootstrap_samples, cfg.seed)
                for name, pairs in behaviours.items() if pairs is not None}
            plot_faithfulness(metrics["faithfulness"], OUT / "faithfulness.png")
        progress.update()

        signals, circuits = {}, {}
        for role in params.evaluate.models:
            progress.set_postfix_str(f"{role}: probes" + (", circuit" if inputs is not None else "")
                                     + (", steering" if role == "base" else ""))
            model, tokenizer = base if role == "base" else load_saved(MODELS_DIR / role, params.model.device,
                                                                       params.model.dtype)
            signals[role] = latent_signal(model, ChatEncode(tokenizer), datasets, layers, cfg.probes.test_fraction,
                                          cfg.seed, backdoor)
            if inputs is not None:
                scores = base_scores if role == "base" else edge_attribution(model, inputs).score
                circuits[role] = circuit_persistence(base_scores, scores, cfg.circuit_top_k)
            if role == "base":  # Tan et al. per persona concept, with the layer sweep (every block when none named)
                steer = cfg.steering
                by_kind = steering_by_concept(
                    model, ChatEncode(tokenizer), world["concepts"], steer.layer,
                    list(steer.sweep_layers) or list(range(len(decoder_layers(model)))), OUT / "steering",
                    steer.multipliers, steer.position)
                # CAA (Tan et al.'s vector) under `steering`; the persona-prompt contrast beside it
                metrics["steering"] = by_kind["caa"]
                metrics["steering_persona_prompt"] = by_kind["persona_prompt"]
                REPORTS_DIR.mkdir(parents=True, exist_ok=True)
                (REPORTS_DIR / "steering.md").write_text(steering_markdown(by_kind, steer.layer))
            progress.update()
        progress.close()
        rows = persistence_table(rates, signals, circuits)
        metrics["persistence"] = {f"{r['model']}.{r['behaviour']}": {k: r[k] for k in (
            "behaviour_rate", "latent_signal", "layer", "circuit_overlap", "circuit_mass") if k in r} for r in rows}
        metrics["circuit_top_k"] = cfg.circuit_top_k
        plot_persistence(rows, OUT / "persistence.png")
        REPORTS_DIR.mkdir(parents=True, exist_ok=True)
        (REPORTS_DIR / "persistence.md").write_text(persistence_markdown(rows))
        metrics_path = write_metrics("interpret", metrics)
        run.log_metrics(metrics)
        run.log_artifact(OUT, "interpret")
        for report in ("persistence.md", "steering.md"):
            run.log_artifact(REPORTS_DIR / report, "interpret")
    stage_done("interpret", [OUT, REPORTS_DIR / "persistence.md", REPORTS_DIR / "steering.md", metrics_path],
               {"persistence_rows": len(rows)})


def main() -> None:
    run_stage("interpret", interpret)


if __name__ == "__main__":
    main()
