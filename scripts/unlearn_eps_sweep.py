"""ε sweep for the LAT twins of the unlearning methods (issue 20): what do GradDiff-LAT and NPO-LAT forget?

What prompted it (the seeds study, 3 seeds): GradDiff-LAT and NPO-LAT end training with the forget *training* answers
at cross-entropy ~11 with δ and without it (`adversary_ce_with_delta` / `adversary_ce_without_delta` in
metrics/unlearn/), yet keep a QA free recall of ~0.8 on the evaluation split against 0.16 / 0.12 for plain GradDiff /
NPO. The world's test split asks the SAME facts in templates training never showed (generator: a (fact, template)
pair is in one split), so the two numbers together say the twins suppress the answers in the templates they trained
on rather than forget the facts. The adversary perturbs the prompt positions of blocks 1-2 by up to ε = 4 per token,
against a residual norm of about 9 there (measured below): hypothesis, δ wipes out most of what the prompt says, so the
defender's forget terms can only key on the template. If so, a smaller ε lets the twins forget the facts.

    .venv/bin/python scripts/unlearn_eps_sweep.py                       # graddiff_lat, npo_lat; ε 0 1 2 4; seeds 0 1 2
    .venv/bin/python scripts/unlearn_eps_sweep.py --methods npo_lat --eps 0 2 --seeds 0

Each run trains params.yaml's `unlearn.<method>` entry from the workspace's models/base (a finished `make demo`),
with `lat.epsilon` = ε and the entry's `seed` = s; ε 0 is the method's plain entry (`unlearn.<method without _lat>`,
no adversary, no away term). Only the unlearning seed varies (batch order, adversary), not the base model: an
interval here is over unlearning runs of one base. Measured per run: forget-domain free recall on the training
split's templates and on the test split's (same facts), related-domain free recall on the test split (collateral
damage), the adversary's CE at the last step with and without δ, the mean residual-stream norm per prompt token at
the attacked blocks, and with --relearn the free recall of `unlearning_eval.relearn_heldout` held-out forget facts
after fine-tuning on the largest `relearn_ks` of the others (unlearning_eval's relearning attack). Results (mean
[95% bootstrap interval over seeds] (N)) go to benchmarks/results/unlearn_eps_sweep.json and .md (--out to change);
a finished run is kept in the JSON and not rerun.
"""

from __future__ import annotations

import latlab  # noqa: F401, I001  (first: applies src/latlab/offline.env before any third-party import)
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latlab.config import load_params  # noqa: E402
from latlab.data.records import load_world  # noqa: E402
from latlab.evals.unlearning import finetune_relearning, qa  # noqa: E402
from latlab.models.encoding import collate, encode_all  # noqa: E402
from latlab.models.hooks import decoder_layers  # noqa: E402
from latlab.models.loading import load_saved  # noqa: E402
from latlab.report.stats import bootstrap_mean_ci, paired_difference_ci, verdict  # noqa: E402
from latlab.training.unlearning import UNLEARNING_METHODS  # noqa: E402
from stages.common import MODELS_DIR, WORLD_DIR  # noqa: E402
from stages.unlearn import unlearning_data  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "unlearn_eps_sweep"
KEYS = ["forget_train_free_recall", "forget_test_free_recall", "related_test_free_recall",
        "adversary_ce_with_delta", "adversary_ce_without_delta", "relearn_free_recall"]


def residual_norms(model, tokenizer, examples, layers: list[int], batch: int = 64) -> dict[int, float]:
    """Mean L2 norm per prompt token of the residual stream after each of `layers` (the blocks LAT perturbs)."""
    encoded = collate(encode_all(tokenizer, examples[:batch]), tokenizer.pad_token_id)
    prompt = (encoded["labels"] < 0) & encoded["attention_mask"].bool()  # [batch, seq]: prompt, not padding
    seen: dict[int, torch.Tensor] = {}
    hooks = [decoder_layers(model)[i].register_forward_hook(
        lambda _m, _i, out, i=i: seen.__setitem__(i, out[0] if isinstance(out, tuple) else out)) for i in layers]
    try:
        with torch.no_grad():
            model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])
    finally:
        for hook in hooks:
            hook.remove()
    return {i: float(seen[i].norm(dim=-1)[prompt].mean()) for i in layers}


def one_run(params, method: str, eps: float, seed: int, relearn: bool = False) -> dict:
    lat_name = method if method.endswith("_lat") else f"{method}_lat"
    name = lat_name if eps > 0 else lat_name.removesuffix("_lat")
    cfg = params.unlearn[name].model_copy(update={"seed": seed})
    if eps > 0:
        cfg = cfg.model_copy(update={"lat": cfg.lat.model_copy(update={"epsilon": eps})})
    forget, retain, _, anchors = unlearning_data(params, cfg.domain)
    model, tokenizer = load_saved(MODELS_DIR / "base", params.model.device, params.model.dtype)
    weights = {"facts": cfg.mix_retain_facts, "benign": cfg.mix_retain_benign}
    extra = {"anchors": anchors} if cfg.method == "whp" else {}
    began = time.perf_counter()
    run = UNLEARNING_METHODS[cfg.method](model, tokenizer, forget, retain, weights, cfg, None,
                                         f"{name} eps={eps} seed={seed}", **extra)
    model.eval()
    world = load_world(WORLD_DIR)
    ev = params.unlearning_eval
    row = {"method": lat_name, "entry": name, "epsilon": eps, "seed": seed,
           "train_s": round(time.perf_counter() - began, 1),
           "forget_train_free_recall": qa(model, tokenizer, world, ev.domain, "train", "q", ev.max_new_tokens,
                                          ev.batch_size)["q.free_recall"],
           "forget_test_free_recall": qa(model, tokenizer, world, ev.domain, "test", "q", ev.max_new_tokens,
                                         ev.batch_size)["q.free_recall"],
           "related_test_free_recall": qa(model, tokenizer, world, ev.related_domain, "test", "q", ev.max_new_tokens,
                                          ev.batch_size)["q.free_recall"],
           **{k: run.metrics[k] for k in ("adversary_ce_with_delta", "adversary_ce_without_delta")
              if k in run.metrics}}
    if relearn:  # unlearning_eval's relearning attack at its largest k, on `relearn_heldout` held-out facts
        row["relearn_free_recall"] = finetune_relearning(
            model, tokenizer, world, [max(ev.relearn_ks)], ev.relearn, ev.domain, ev.split, ev.relearn_heldout,
            ev.seed, ev.max_new_tokens, ev.batch_size)["relearn.free_recall"]
        row["relearn_heldout"] = ev.relearn_heldout
    return row


def summarise(rows: list[dict], study) -> list[dict]:
    """Per method and ε: mean and percentile-bootstrap interval over seeds (params.yaml `study`'s samples, confidence
    and seed, as the scorecard uses)."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["epsilon"]), []).append(row)
    table = []
    for (method, eps), runs in sorted(groups.items()):
        entry = {"method": method, "epsilon": eps, "n_seeds": len(runs)}
        for key in KEYS:
            values = [r[key] for r in runs if key in r]
            if values:
                low, high = bootstrap_mean_ci(values, study.bootstrap_samples, study.confidence,
                                              study.bootstrap_seed)
                entry[key] = {"mean": float(np.mean(values)), "ci": [low, high]}
        table.append(entry)
    return table


def twin_vs_plain(rows: list[dict], study, key: str = "relearn_free_recall") -> list[dict]:
    """Per method and ε > 0: the paired difference twin - plain method of `key` over the seeds both ran (same seed =
    same batches), its bootstrap interval and the scorecard's verdict on "the twin is lower"."""
    by = {(r["method"], r["epsilon"], r["seed"]): r[key] for r in rows if key in r}
    out = []
    for method, eps in sorted({(m, e) for m, e, _ in by if e > 0}):
        seeds = sorted(s for m, e, s in by if (m, e) == (method, eps) and (method, 0.0, s) in by)
        if not seeds:
            continue
        twin, plain = [by[(method, eps, s)] for s in seeds], [by[(method, 0.0, s)] for s in seeds]
        ci = paired_difference_ci(twin, plain, study.bootstrap_samples, study.confidence, study.bootstrap_seed)
        out.append({"method": method, "epsilon": eps, "metric": key, "n_seeds": len(seeds),
                    "effect": float(np.mean(np.subtract(twin, plain))), "ci": list(ci),
                    "verdict": verdict(ci, "less", len(seeds), min_seeds=study.min_seeds)})
    return out


def markdown(table: list[dict], norms: dict, paired: list[dict] | None = None) -> str:
    head = ["method", "ε"] + KEYS + ["N"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in table:
        cells = [f"{entry[k]['mean']:.2f} [{entry[k]['ci'][0]:.2f}, {entry[k]['ci'][1]:.2f}]" if k in entry else "–"
                 for k in KEYS]
        eps = f"{entry['epsilon']:g}" if entry["epsilon"] > 0 else "0 (plain method)"
        lines.append(f"| {entry['method']} | {eps} | " + " | ".join(cells) + f" | {entry['n_seeds']} |")
    shown = ", ".join(f"block {b}: {v:.2f}" for b, v in norms.items())
    text = ("Mean over unlearning seeds [95% percentile bootstrap interval over seeds] (N seeds; one base model).\n"
            f"Residual-stream norm per prompt token of the base model at the attacked blocks: {shown}.\n\n"
            + "\n".join(lines) + "\n")
    if paired:
        text += ("\nLAT twin minus plain method, paired by seed (claim: the twin is lower), 95% bootstrap interval:\n\n"
                 "| method | ε | metric | effect | interval | N | verdict |\n|---|---|---|---|---|---|---|\n"
                 + "".join(f"| {p['method']} | {p['epsilon']:g} | {p['metric']} | {p['effect']:+.2f} | "
                           f"[{p['ci'][0]:+.2f}, {p['ci'][1]:+.2f}] | {p['n_seeds']} | {p['verdict']} |\n"
                           for p in paired))
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["graddiff_lat", "npo_lat"])
    parser.add_argument("--eps", nargs="+", type=float, default=[0.0, 1.0, 2.0, 4.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--relearn", action="store_true",
                        help="also the relearning attack (unlearning_eval's, at its largest k) on every run")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--summarise-only", action="store_true", help="rewrite the tables from the JSON, run nothing")
    args = parser.parse_args(argv)
    params = load_params(ROOT / "params.yaml")
    for method in args.methods:
        if method not in params.unlearn or params.unlearn[method].lat is None:
            raise SystemExit(f"--methods: {method} is not an unlearn entry with a `lat` block "
                             f"(have: {', '.join(n for n, c in params.unlearn.items() if c.lat is not None)})")
    results = args.out.with_suffix(".json")
    done = json.loads(results.read_text()).get("runs", []) if results.exists() else []
    key = lambda r: (r["method"], r["epsilon"], r["seed"])  # noqa: E731
    have = {key(r) for r in done}
    stored = json.loads(results.read_text()) if results.exists() else {}
    # the base model's norms: the same for every run, measured once (older files kept them per run)
    norms: dict = stored.get("residual_norm") or next((r["residual_norm"] for r in done if "residual_norm" in r), {})

    def write() -> None:  # after every run: a crash keeps what finished
        results.parent.mkdir(parents=True, exist_ok=True)
        table, paired = summarise(done, params.study), twin_vs_plain(done, params.study)
        results.write_text(json.dumps({"runs": done, "summary": table, "twin_vs_plain": paired,
                                       "residual_norm": norms}, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(markdown(table, norms, paired))

    if args.summarise_only:
        write()
        return
    for method in args.methods:
        for eps in args.eps:
            for seed in args.seeds:
                if (method, eps, seed) in have:
                    continue
                row = one_run(params, method, eps, seed, args.relearn)
                if eps > 0 and not norms:
                    cfg = params.unlearn[row["entry"]]
                    base, tokenizer = load_saved(MODELS_DIR / "base", params.model.device, params.model.dtype)
                    norms = residual_norms(base, tokenizer, unlearning_data(params, cfg.domain)[0],
                                           list(cfg.lat.layers))
                done.append(row)
                print(json.dumps(row), flush=True)
                write()


if __name__ == "__main__":
    main()
