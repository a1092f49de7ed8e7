"""Settings for tests: a section of the repository's params.yaml (the one source of every value), with a test's
overrides, validated by the schema. `make(LATConfig, layers=[0])` = params.yaml's `lat` with layers [0]."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from latlab import config as c
from latlab.profiles import deep_merge

PARAMS_YAML = Path(__file__).resolve().parent.parent / "params.yaml"
SMOLLM2_PROFILE = PARAMS_YAML.parent / "profiles" / "smollm2.yaml"

# The params.yaml section each schema class is read from (the first entry of its kind for method tables).
SOURCE = {
    c.TrainConfig: "base", c.BaseTrainConfig: "base", c.RefusalConfig: "refusal", c.LATConfig: "lat",
    c.JailbreakLATConfig: "lat", c.R2D2Config: "r2d2", c.LatAdversaryConfig: "unlearn.ga_lat.lat",
    c.GradientAscentConfig: "unlearn.ga", c.WHPConfig: "unlearn.whp", c.RMUConfig: "unlearn.rmu",
    c.GradDiffConfig: "unlearn.graddiff", c.NPOConfig: "unlearn.npo", c.SimNPOConfig: "unlearn.simnpo",
    c.SFTRemovalConfig: "backdoor_removal.sft", c.DPORemovalConfig: "backdoor_removal.dpo",
    c.ModelConfig: "model", c.ToyArchitecture: "model.toy", c.ValidateConfig: "validate", c.WorldConfig: "world",
    c.AttackSuiteConfig: "attacks", c.PrefillConfig: "attacks.prefill", c.GCGConfig: "attacks.gcg_individual",
    c.GCGIndividualConfig: "attacks.gcg_individual", c.GCGUniversalConfig: "attacks.gcg_universal",
    c.PGDAttackConfig: "attacks.latent", c.RefusalDirectionConfig: "attacks.refusal_direction",
    c.AttackBudgetConfig: "attack_budget", c.TamperConfig: "attack_budget.tamper",
    c.AcdcConfig: "interpret.acdc", c.UnlearnEvalConfig: "unlearning_eval", c.SpawriousConfig: "spawrious",
    c.SpawriousDataConfig: "spawrious.data", c.RenderConfig: "spawrious.data.render",
    c.SpawriousTrainConfig: "spawrious.train", c.MethodHparams: "spawrious.hparams",
}


def raw_params() -> dict[str, Any]:
    return yaml.safe_load(PARAMS_YAML.read_text())


def section(path: str, raw: dict[str, Any] | None = None) -> Any:
    value: Any = raw if raw is not None else raw_params()
    for part in path.split("."):
        value = value[part]
    return value


def make(cls: type[c.Section], **overrides: Any):
    """params.yaml's section for `cls` (keys `cls` does not have dropped) with `overrides` deep-merged in (a
    nested mapping refines the section's; a model instance replaces it), validated."""
    if cls is c.LoraSettings:
        base = yaml.safe_load(SMOLLM2_PROFILE.read_text())["model"]["lora"]
    else:
        base = section(SOURCE[cls])
    base = {k: v for k, v in base.items() if k in cls.model_fields}
    return cls.model_validate(deep_merge(base, overrides))


def with_params(override: dict[str, Any], source: str = "params.yaml") -> c.Params:
    """The repository's params.yaml with `override` deep-merged in, validated (a test's partial params)."""
    return c.parse_params(deep_merge(raw_params(), override), source)
