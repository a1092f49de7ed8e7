"""The seed study (issue 14, `make study`): the whole pipeline once per training seed, then conclusions with intervals.

    python -m flows.study                              # params.yaml's `study` section: seeds, workdir, parallelism
    python -m flows.study --profile profiles/smoke.yaml --seeds 0 1    # a quick end-to-end try
    python -m flows.study --profile profiles/smoke.yaml --seeds 0 1 --stages generate base    # a quicker one
    python -m flows.study --stages evaluate           # one stage again on every seed, e.g. after an attack setting
                                                      # changed (its upstream and the other stages' metrics kept)
    python -m flows.study --collect-only               # rebuild metrics/study/, scorecard from finished seed runs

Each study seed s runs every dvc.yaml stage in <study.workdir>/seed_<s>/ (own params.yaml, data, models, metrics,
mlflow.db; flows/profile_run.py's work-directory machinery), with every `seed` and `*_seed` key of params.yaml
(training samplers and inits, adversaries, attacks, evaluations, probes, ACDC, the RMU direction, Spawrious training)
offset by s, so seed 0 is params.yaml itself. The data seeds (`DATA_SEEDS`: the world generator's top-level `seed`,
Spawrious' `spawrious.data.seed`) stay fixed unless `study.vary_data_seed`: every seed then trains and evaluates on
the same data, and the spread between seeds is training (and attack) variance, not a different world. Every stage's
MLflow run is tagged latlab.study = study.name and latlab.seed = s (latlab.tracking.STUDY_ENV).

Afterwards each seed's metrics/*.json (small JSON only) are copied to metrics/study/seed_<s>/, and from them:
metrics/study/summary.json (every headline number: mean, bootstrap CI over seeds, N; latlab.report.seed_summary)
with its evaluate table reports/study_evaluate.md, and metrics/scorecard.json with reports/scorecard.md (one row
per claim, paired bootstrap over seeds, verdict; latlab.report.scorecard). A failed seed is reported and left out
(the scorecard says how many seeds each row has).

Parallelism: `study.parallel` seeds run at once, each stage process with `study.torch_threads` torch threads
(OMP_NUM_THREADS / MKL_NUM_THREADS; nothing else in latlab sets a thread count, latlab.parallel only launches
data-parallel processes when model.processes > 1). On the 2-core machine the default is all 3 seeds at once with
1 thread each: the toy model (d_model 128) gains little from a second intra-op thread, and much of a stage is
single-threaded anyway (imports, MLflow, generation loops), so single-thread processes use the cores best; with 2 at
once the third seed would run alone afterwards on one thread with a core idle, and 3 on 2 cores share them instead
(about 1.5 single-seed times instead of 2). Not yet timed against the alternatives: each seed's
reports/study_run.json holds its stage times.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.task_runners import ThreadPoolTaskRunner

from flows.dag import preflight, remove, resolved_with, stage_commands, stage_env, stage_order, stage_outputs
from flows.launch import PRELOAD, start_server
from flows.profile_run import prepare_workdir, run_stage, run_stages
from latlab.config import ConfigError, StudyConfig, parse_params
from latlab.profiles import merged_profile
from latlab.report.scorecard import RESAMPLING, build_scorecard, scorecard_markdown
from latlab.report.seed_summary import (backdoor_markdown, evaluate_markdown, load_metrics_tree, summarize_seeds,
                                        unlearning_markdown)
from latlab.report.unlearning_verdict import unlearning_verdicts, verdicts_markdown

ROOT = Path(__file__).resolve().parents[1]
# params keys (paths) whose seed generates data rather than training: fixed across the study's seeds by default
DATA_SEEDS = (("seed",), ("spawrious", "data", "seed"))
STUDY_SECTION = "study"  # the study's own settings (its bootstrap_seed included) are not offset
STUDY_DIR = Path("metrics/study")
SCORECARD_JSON = Path("metrics/scorecard.json")
SCORECARD_MD = Path("reports/scorecard.md")
EVALUATE_MD = Path("reports/study_evaluate.md")
UNLEARNING_MD = Path("reports/study_unlearning.md")
BACKDOOR_MD = Path("reports/study_backdoor.md")


def is_seed_key(key: str) -> bool:
    return key == "seed" or key.endswith("_seed")


def seed_keys(raw: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of every integer `seed` / `*_seed` key in a params tree (method-table entries and nested blocks too),
    the `study` section excepted."""
    found = []
    for key, value in raw.items():
        here = (*path, str(key))
        if here == (STUDY_SECTION,):
            continue
        if isinstance(value, dict):
            found += seed_keys(value, here)
        elif is_seed_key(str(key)) and isinstance(value, int) and not isinstance(value, bool):
            found.append(here)
    return found


def seed_params(raw: dict[str, Any], study_seed: int, vary_data_seed: bool) -> dict[str, Any]:
    """A copy of params `raw` with every training seed key (`seed_keys`) offset by `study_seed`; the data seeds
    (`DATA_SEEDS`) too only when `vary_data_seed`. Offsetting (not replacing) keeps seeds that params.yaml sets apart
    (say, two stages on seeds 0 and 1) apart in every study seed."""
    params = copy.deepcopy(raw)
    for path in seed_keys(raw):
        if path in DATA_SEEDS and not vary_data_seed:
            continue
        node = params
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] += study_seed
    return params


def study_params(repo: Path, profile: Path | None) -> dict[str, Any]:
    """repo params.yaml (+ `profile`), validated; ConfigError naming the key."""
    if profile is not None:
        return merged_profile(profile, repo / "params.yaml")
    raw = yaml.safe_load((repo / "params.yaml").read_text()) or {}
    parse_params(raw, str(repo / "params.yaml"))
    return raw


def unlearning_tolerance(raw: dict[str, Any]) -> float:
    """The unlearning verdict's tolerance (params unlearning_eval.tolerance; the study's seeds do not change it)."""
    return float(raw["unlearning_eval"]["tolerance"])


def seed_workdir(repo: Path, cfg: StudyConfig, study_seed: int) -> Path:
    return repo / cfg.workdir / f"seed_{study_seed}"


def seed_env(repo: str, cfg: StudyConfig, study_seed: int) -> dict[str, str]:
    """The environment of a seed's stage commands: `stage_env`, the study's torch threads, its MLflow tags."""
    threads = str(cfg.torch_threads)
    return {**stage_env(repo), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
            "LATLAB_STUDY": cfg.name, "LATLAB_STUDY_SEED": str(study_seed)}


def stage_outputs_of(dag: Path, stages: list[str]) -> list[str]:
    """The outputs of `stages` in the DVC repo `dag` (`resolved_with`), as paths relative to it."""
    return [str(path.relative_to(dag)) for name, paths in stage_outputs(dag).items() if name in stages
            for path in paths]


def clear_stale(workdir: Path, stale: list[str] | None) -> None:
    """Before a seed's run: remove what it will rewrite. `stale` None (the whole pipeline): every metric of an
    earlier run, so that a seed failing part way cannot pass an old run's numbers for the stages it did not reach to
    the scorecard. A list (a partial run, `--stages`): those stages' outputs (paths relative to the work directory),
    so the other stages' metrics of the earlier run stay and are collected with the new ones."""
    if stale is None:
        shutil.rmtree(workdir / "metrics", ignore_errors=True)
    else:
        remove([workdir / path for path in stale])


@task(name="study-seed", task_run_name="seed-{study_seed}")
def run_seed(study_seed: int, raw: dict[str, Any], cfg: StudyConfig, repo: str, order: list[str],
             commands: dict[str, str], stale: list[str] | None = None) -> dict[str, float]:
    """`order`'s stages (their dvc.yaml `commands`) for one study seed in its work directory; stage -> wall seconds
    (<workdir>/reports/study_run.json). `stale`: as `clear_stale` (every stage reruns here, with no DVC up-to-date
    check)."""
    workdir = seed_workdir(Path(repo), cfg, study_seed)
    clear_stale(workdir, stale)
    workdir.mkdir(parents=True, exist_ok=True)
    seed_file = workdir / "study_seed_params.yaml"  # the full params of this seed, applied as a profile
    seed_file.write_text(f"# study {cfg.name}, seed {study_seed}: params with training seeds offset by {study_seed}\n"
                         + yaml.safe_dump(seed_params(raw, study_seed, cfg.vary_data_seed), sort_keys=False))
    prepare_workdir(seed_file, workdir, Path(repo))
    env = seed_env(repo, cfg, study_seed)
    logger = get_run_logger()

    def emit(line: str) -> None:
        logger.info(f"[seed {study_seed}] {line}")

    return run_stages(order, commands,
                      lambda stage, cmd: run_stage(stage, cmd, str(workdir.resolve()), env, emit),
                      workdir / "reports" / "study_run.json",
                      {"study": cfg.name, "seed": study_seed, "torch_threads": str(cfg.torch_threads)})


def collect(repo: Path, cfg: StudyConfig, seeds: list[int]) -> dict[int, dict[str, Any]]:
    """Copy each seed's metrics/**/*.json into metrics/study/seed_<s>/ (replacing an older copy) and load them; a
    seed without a work directory is read from its earlier copy (a fresh clone rebuilds the conclusions of the
    committed study, e.g. after the report code changed); seeds with neither are left out."""
    per_seed: dict[int, dict[str, Any]] = {}
    for study_seed in seeds:
        source = seed_workdir(repo, cfg, study_seed) / "metrics"
        target = repo / STUDY_DIR / f"seed_{study_seed}"
        if not source.is_dir():
            if target.is_dir():
                per_seed[study_seed] = load_metrics_tree(target)
            continue
        shutil.rmtree(target, ignore_errors=True)
        files = load_metrics_tree(source)
        for name, body in files.items():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_text(json.dumps(body, indent=2, sort_keys=True))
        per_seed[study_seed] = files
    return per_seed


def write_conclusions(repo: Path, cfg: StudyConfig, per_seed: dict[int, dict[str, Any]],
                      tolerance: float) -> list[dict[str, Any]]:
    """metrics/study/summary.json, metrics/study/unlearning_verdict.json (removed / suppressed / inconclusive over
    seeds at `tolerance`, params unlearning_eval.tolerance), reports/study_{evaluate,unlearning,backdoor}.md,
    metrics/scorecard.json and reports/scorecard.md from the collected seeds."""
    bootstrap = {"samples": cfg.bootstrap_samples, "confidence": cfg.confidence, "seed": cfg.bootstrap_seed}
    header = {"study": cfg.name, "seeds": sorted(per_seed), "confidence": cfg.confidence, "min_seeds": cfg.min_seeds,
              "bootstrap_samples": cfg.bootstrap_samples, "data_seed_varied": cfg.vary_data_seed}
    summary = summarize_seeds(per_seed, **bootstrap)
    (repo / STUDY_DIR).mkdir(parents=True, exist_ok=True)
    (repo / STUDY_DIR / "summary.json").write_text(json.dumps({**header, "numbers": summary}, indent=2))
    rows = build_scorecard(per_seed, **bootstrap, min_seeds=cfg.min_seeds)
    (repo / SCORECARD_JSON).write_text(json.dumps({**header, "resampling": RESAMPLING, "claims": rows}, indent=2))
    (repo / SCORECARD_MD).parent.mkdir(parents=True, exist_ok=True)
    verdicts = unlearning_verdicts(per_seed, tolerance, **bootstrap, min_seeds=cfg.min_seeds)
    (repo / STUDY_DIR / "unlearning_verdict.json").write_text(json.dumps({**header, **verdicts}, indent=2))
    for path, table, source in ((EVALUATE_MD, evaluate_markdown, "evaluate.json"),
                                (UNLEARNING_MD, unlearning_markdown, "unlearning_eval.json"),
                                (BACKDOOR_MD, backdoor_markdown, "backdoor_removal/*.json")):
        text = table(summary, cfg.confidence)
        if path == UNLEARNING_MD and verdicts:
            text += "\n" + verdicts_markdown(verdicts, cfg.confidence)
        (repo / path).write_text(f"Study `{cfg.name}`, seeds {sorted(per_seed)}: {source}\n\n" + text)
    (repo / SCORECARD_MD).write_text(f"Study `{cfg.name}`, seeds {sorted(per_seed)}.\n\n"
                                     + scorecard_markdown(rows, cfg.confidence, cfg.min_seeds))
    return rows


@flow(name="latlab-study", log_prints=True)
def study(raw: dict[str, Any], seeds: list[int], repo: str = str(ROOT), stages: list[str] | None = None,
          conclusions: bool = True) -> dict[str, Any]:
    """Every seed's pipeline (all stages, or `stages`; as many seeds at once as the flow's task runner allows:
    `run_study`), then (`conclusions`) the collected metrics, summary and scorecard. Returns {"failed": {seed:
    error}, "seconds"}."""
    cfg = StudyConfig.model_validate(raw[STUDY_SECTION])
    began = time.perf_counter()
    failed: dict[int, str] = {}
    # DVC reads the DAG once, here: seeds in threads opening the same DVC repo at once could meet its lock. It is
    # resolved against the study's params (a profile may change method tables and split lists); seeds differ only
    # in seed values, which no foreach/matrix item depends on.
    with tempfile.TemporaryDirectory(prefix="latlab-study-") as tmp:
        params = Path(tmp) / "params.yaml"
        params.write_text(yaml.safe_dump(raw, sort_keys=False))
        with resolved_with(params, Path(repo)) as dag:
            order, commands = stage_order(dag, stages), stage_commands(dag)
            stale = None if stages is None else stage_outputs_of(dag, order)
    # the seeds' stages start in children of one fork server (flows.launch), started here, before the seeds' threads
    if seeds:
        start_server(seed_env(repo, cfg, seeds[0]), PRELOAD)
    futures = {s: run_seed.submit(s, raw, cfg, repo, order, commands, stale) for s in seeds}
    for study_seed, future in futures.items():
        try:
            future.result()
        except Exception as err:  # one failed seed must not cost the others' results
            failed[study_seed] = str(err)
            print(f"seed {study_seed} failed: {err}")
    rows = (write_conclusions(Path(repo), cfg, collect(Path(repo), cfg, seeds), unlearning_tolerance(raw))
            if conclusions else [])
    print(f"study {cfg.name}: {len(seeds) - len(failed)}/{len(seeds)} seeds in {time.perf_counter() - began:.0f} s"
          + ("; " + ", ".join(f"{r['verdict']}" for r in rows) if rows else ""))
    return {"failed": failed, "seconds": round(time.perf_counter() - began, 1)}


def run_study(raw: dict[str, Any], seeds: list[int], repo: str = str(ROOT), stages: list[str] | None = None,
              conclusions: bool = True) -> dict[str, Any]:
    """`study` with `study.parallel` seeds at once (a thread per seed; the work runs in each stage's process)."""
    parallel = StudyConfig.model_validate(raw[STUDY_SECTION]).parallel
    return study.with_options(task_runner=ThreadPoolTaskRunner(max_workers=parallel))(raw, seeds, repo, stages,
                                                                                      conclusions)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.study", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, help="a params profile applied to params.yaml for every seed")
    parser.add_argument("--seeds", type=int, nargs="+", help="study seeds to run instead of study.seeds")
    parser.add_argument("--stages", nargs="+", help="only these dvc.yaml stages (DAG order kept; their upstream is not rerun "
                        "and the other stages' metrics in the seeds' work directories are kept)")
    parser.add_argument("--no-conclusions", action="store_true",
                        help="leave metrics/study/ and the scorecard alone (a side study, e.g. `make spawrious`)")
    parser.add_argument("--collect-only", action="store_true",
                        help="no training: rebuild metrics/study/ and the scorecard from the seeds' work directories")
    args = parser.parse_args(argv)
    try:
        raw = study_params(ROOT, args.profile)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    cfg = StudyConfig.model_validate(raw[STUDY_SECTION])
    seeds = args.seeds or cfg.seeds
    if args.collect_only:
        rows = write_conclusions(ROOT, cfg, collect(ROOT, cfg, seeds), unlearning_tolerance(raw))
        print(f"{SCORECARD_JSON}: {len(rows)} claims; {SCORECARD_MD}")
        return
    problems = preflight(ROOT, args.stages, args.profile)  # before Prefect starts its API server
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if problems:
        raise SystemExit(2)
    result = run_study(raw, seeds, stages=args.stages, conclusions=not args.no_conclusions)
    if result["failed"]:
        print(f"error: seeds {sorted(result['failed'])} failed", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
