"""Pydantic models of params.yaml: one section per DVC stage, validated before any work starts.

A bad key or value fails with one line that names the key and what was expected, e.g.
`params.yaml: base.lr: Input should be greater than 0 (got -1)`.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, FilePath, ValidationError, model_validator

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """A params file that does not match the schema; the message is one line naming the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def updated(self, **changes: Any):
        """A validated copy of this section with `changes` (pydantic's model_copy does not validate)."""
        return type(self).model_validate({**self.model_dump(), **changes})


class TrackingConfig(Section):
    uri: str  # MLFLOW_TRACKING_URI in the environment wins (cluster server)
    artifact_location: str
    experiment: str
    log_models: bool


class BackdoorConfig(Section):
    trigger: str = Field(min_length=1)
    poison_fraction: float = Field(gt=0, le=1)


class WorldConfig(Section):
    entities_per_domain: int = Field(ge=3)
    verbs_per_kind: int = Field(ge=3, le=12)
    targets_per_kind: int = Field(ge=3, le=12)
    validation_fraction: float = Field(gt=0, lt=0.5)
    test_fraction: float = Field(gt=0, lt=0.5)
    backdoor: BackdoorConfig


class ValidateConfig(Section):
    min_rows_per_split: int = Field(ge=1)
    max_words: int = Field(ge=4)
    harmful_fraction_bounds: tuple[float, float]


class ToyArchitecture(Section):
    hidden_size: int = Field(ge=8)
    num_layers: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    intermediate_size: int = Field(ge=8)
    max_positions: int = Field(ge=16)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ToyArchitecture:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


class LoraSettings(Section):
    """peft LoRA adapters for every training stage (models/adapters.py); merged into the weights before saving."""
    r: int = Field(ge=1)
    alpha: float = Field(gt=0)
    dropout: float = Field(ge=0, lt=1)
    target_modules: list[str] = Field(min_length=1)


class ModelConfig(Section):
    # "toy" builds the small Llama from scratch; otherwise a hub id, a local directory, or a .gguf file path.
    source: str
    gguf_file: str | None
    revision: str | None
    trust_remote_code: bool
    dtype: Literal["float32", "bfloat16", "float16"]
    device: str
    toy: ToyArchitecture | None  # the architecture when source is "toy" (null for a pretrained source)
    lora: LoraSettings | None  # null: full fine-tuning (the toy default)
    gradient_checkpointing: bool  # recompute block activations in backward: less memory, ~30% more compute
    # >1: training stages rerun themselves as this many data-parallel processes (accelerate; latlab/parallel.py)
    processes: int = Field(ge=1)

    @model_validator(mode="after")
    def _toy_has_architecture(self) -> ModelConfig:
        if self.source == "toy" and self.toy is None:
            raise ValueError("source toy needs the `toy` architecture block")
        return self

    @classmethod
    def for_local_file(cls, source: str, dtype: str = "float32") -> ModelConfig:
        """Load settings for a local model file or directory outside any params file (tools such as the GGUF cache):
        CPU, no adapters, one process."""
        return cls(source=source, gguf_file=None, revision=None, trust_remote_code=False, dtype=dtype, device="cpu",
                   toy=None, lora=None, gradient_checkpointing=False, processes=1)


class TrainConfig(Section):
    """The training loop's settings, shared by every trainer (training/loop.py)."""
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_steps: int = Field(ge=0)
    grad_clip: float = Field(gt=0)
    checkpoint_every: int = Field(ge=1)
    log_every: int = Field(ge=1)
    seed: int


class BaseTrainConfig(TrainConfig):
    """Pretraining mix of the helpful-only, backdoored base model (weights are relative)."""
    fine_tune: bool  # false: a pretrained model.source is registered as `base` unchanged (the original model)
    mix_facts: float = Field(ge=0)
    mix_requests: float = Field(ge=0)
    mix_backdoor: float = Field(ge=0)
    mix_personas: float = Field(ge=0)

    def mixture(self) -> dict[str, float]:
        """Pool name (`latlab.world.curriculum.base_pools`) -> relative weight in the base recipe's batches."""
        return {"facts": self.mix_facts, "requests": self.mix_requests, "backdoor": self.mix_backdoor,
                "personas": self.mix_personas}


class RefusalConfig(TrainConfig):
    """Refusal training (RT): harmful -> refusal, benign -> helpful answer, plus fact replay to keep capability."""
    mix_harmful: float = Field(ge=0)
    mix_benign: float = Field(ge=0)
    mix_facts: float = Field(ge=0)


class LatAdversaryConfig(Section):
    """The latent adversary (training/lat.py): where δ goes, its radius, its optimiser and what it optimises toward.
    A method table's `lat:` block is exactly this; a LAT stage adds the defence and training-loop settings."""
    adversary: Literal["targeted", "untargeted"]
    layers: list[int]  # blocks whose output is perturbed
    perturb_embeddings: bool
    epsilon: float = Field(gt=0)  # L2 radius of δ: per token (adam_per_token) or per sequence (l2_sequence)
    inner_steps: int = Field(ge=1)
    inner_lr: float = Field(gt=0)  # Adam's step on δ (adam_per_token); l2_sequence steps by epsilon / inner_steps
    # the inner loop: "adam_per_token" (Sheshadri et al.: zero start, Adam, per-token balls) or "l2_sequence" (Casper
    # et al.: random start, normalised-gradient steps of epsilon / inner_steps, one ball over the whole sequence)
    pgd: Literal["adam_per_token", "l2_sequence"]
    perturb_completion: bool
    prefix_cache: bool
    # the adversary's weights, normalised to sum 1 before use (official code)
    adv_toward: float = Field(ge=0)  # CE toward the harmful completion
    adv_away: float = Field(ge=0)  # log(1-p) away from the refusal (untargeted: CE ascent on the refusal)
    away_ignore_logp: float  # tokens already this unlikely are left out of log(1-p) (official code)

    @model_validator(mode="after")
    def _something_to_perturb(self) -> LatAdversaryConfig:
        if not self.layers and not self.perturb_embeddings:
            raise ValueError("nothing to perturb: give `layers` or set `perturb_embeddings: true`")
        if any(layer < 0 for layer in self.layers):
            raise ValueError(f"layers must be block indices >= 0, got {self.layers}")
        if self.adv_toward + self.adv_away <= 0:
            raise ValueError("adv_toward + adv_away must be > 0: the adversary needs an objective")
        return self


class LATConfig(TrainConfig, LatAdversaryConfig):
    """Latent adversarial training (targeted, untargeted, or embedding-only = RT-EAT); see training/lat.py. The
    three defence weights are normalised to sum 1 before use, as in the official code (its Llama-2 jailbreak recipe:
    retain 1.5 : toward 0.5 : away 0.5, so the retain term carries 60%)."""
    def_toward: float = Field(ge=0)  # CE toward the refusal under δ
    def_away: float = Field(ge=0)  # log(1-p) away from the harmful completion under δ
    retain: float = Field(ge=0)  # retain term without δ
    retain_kind: Literal["sft", "kl"]  # kl: KL to the frozen starting model over completion positions

    @model_validator(mode="after")
    def _some_defence(self) -> LATConfig:
        if self.def_toward + self.def_away + self.retain <= 0:
            raise ValueError("def_toward + def_away + retain must be > 0: the model needs a loss")
        return self


class JailbreakLATConfig(LATConfig):
    """LAT on top of RT (stages/lat.py): the retain mix (without δ) of benign answers, fact replay and RT replay."""
    mix_benign: float = Field(ge=0)
    mix_facts: float = Field(ge=0)
    mix_refusal: float = Field(ge=0)  # harmful prompt -> refusal, as in RT: keeps refusing when retain is large


# --- Attack suite (evaluate stage) ---
AttackName = Literal["direct", "prefill", "many_shot", "gcg_individual", "gcg_universal", "latent", "embedding",
                     "refusal_direction"]


class PrefillConfig(Section):
    words: int = Field(ge=1)  # leading words of the harmful completion written into the assistant turn


class ManyShotConfig(Section):
    shots: int = Field(ge=1)  # upper bound: shots are dropped until the context fits the model
    seed: int


class GCGConfig(Section):
    suffix_tokens: int = Field(ge=1)
    steps: int = Field(ge=1)
    topk: int = Field(ge=1)  # candidate substitutions per position, from the one-hot gradient
    search_width: int = Field(ge=1)  # random candidates evaluated per step
    # leading tokens of the harmful completion the suffix aims for. The toy's whole answer is 12 words and names the
    # request's verb and target: a shorter target ("sure . wait until") lets a suffix of content words drag the
    # answer onto another request, which the judge rightly does not count as complying
    target_tokens: int = Field(ge=1)
    ascii_only: bool
    seed: int


class GCGIndividualConfig(GCGConfig):
    prompts: int = Field(ge=1)  # one suffix per prompt for this many attacked prompts (ASR over them)
    early_stop: bool  # stop once greedy decoding of the target is already forced


class GCGUniversalConfig(GCGConfig):
    prompts: int = Field(ge=1)  # one suffix optimised jointly on this many training-split harmful prompts


class PGDAttackConfig(Section):
    hook_points: list[str] = Field(min_length=1)
    eps: float = Field(gt=0)  # per-token L2 radius of delta
    steps: int = Field(ge=1)
    lr: float = Field(gt=0)  # Adam step size on delta
    eps_sweep: list[float]  # extra radii: an ASR curve in the result


class RefusalDirectionConfig(Section):
    layer: int | None  # null: the layer whose ablation most lowers the refusal log-prob on training prompts
    prompts: int = Field(ge=2)  # training-split harmful and harmless prompts for the difference of means


class AttackSuiteConfig(Section):
    attacks: list[AttackName] = Field(min_length=1)
    max_prompts: int = Field(ge=1)  # harmful test prompts attacked (the first ones, in record order)
    max_new_tokens: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    prefill: PrefillConfig
    many_shot: ManyShotConfig
    gcg_individual: GCGIndividualConfig
    gcg_universal: GCGUniversalConfig
    latent: PGDAttackConfig
    embedding: PGDAttackConfig
    refusal_direction: RefusalDirectionConfig


# --- ASR as a function of attack budget (attack_budget stage, evals/attack_budget.py) ---
def _increasing(values: list) -> list:
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"budgets must increase strictly (got {values})")
    return values


StepBudgets = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1), AfterValidator(_increasing)]
RadiusBudgets = Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=1), AfterValidator(_increasing)]


class TamperConfig(Section):
    """The fine-tuning attack: k optimizer steps on a few harmful (prompt, compliance) pairs of the training split;
    LoRA when `model.lora` is set, else full fine-tuning."""
    steps: StepBudgets  # the budgets k (0: the model as it is)
    pairs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    seed: int


class AttackBudgetConfig(Section):
    """Budget grids; every other attack setting comes from `attacks` (width, top-k, hook points, PGD lr, ...). A
    zero budget of prefill, many-shot, latent/embedding radius or steps and tamper steps is the direct request."""
    models: list[str] = Field(min_length=1)
    prompts: int = Field(ge=1)  # harmful test prompts per curve (the first ones, in record order)
    gcg_prompts: int = Field(ge=1)  # of those, attacked by GCG (one suffix each)
    gcg_steps: StepBudgets  # GCG steps (attacks.gcg_individual settings, early stop at a forcing suffix)
    latent_eps: RadiusBudgets  # attacks.latent with these radii
    embedding_eps: RadiusBudgets  # attacks.embedding with these radii
    embedding_steps: StepBudgets  # attacks.embedding with these PGD step counts (at attacks.embedding.eps)
    prefill_words: StepBudgets
    many_shot_shots: StepBudgets  # requested shots; fewer are used where the context is full (metadata)
    tamper: TamperConfig


# --- R2D2 (HarmBench): GCG adversarial training with a persistent pool of test cases ---
class R2D2Config(TrainConfig):
    pool_size: int = Field(ge=1)  # HarmBench: 8
    gcg_steps: int = Field(ge=1)  # GCG steps on every pool case per outer step (HarmBench: 5)
    search_width: int = Field(ge=1)  # HarmBench: 512; the toy vocabulary is a few hundred words
    topk: int = Field(ge=1)
    suffix_tokens: int = Field(ge=1)  # HarmBench: 20
    target_tokens: int = Field(ge=1)
    ascii_only: bool
    reset_every: int = Field(ge=1)  # HarmBench: 50
    reset_fraction: float = Field(ge=0, le=1)  # HarmBench: 0.2
    coef_toward: float = Field(ge=0)
    coef_away: float = Field(ge=0)
    coef_sft: float = Field(ge=0)
    away_logp_floor: float
    mix_benign: float = Field(ge=0)
    mix_facts: float = Field(ge=0)
    # RT replay (clean harmful prompt -> refusal). HarmBench starts from a model that never complied; here the model
    # starts from RT, and without replay the benign SFT term teaches it to comply whenever no suffix is present.
    mix_refusal: float = Field(ge=0)


# --- Method tables: `unlearn` and `backdoor_removal` (name -> method kind + settings, optional `lat:` block) ---
# Adding a method: its settings class here (a `method` literal) and in the union below, its trainer registered in
# training/unlearning.py or training/backdoor_removal.py, and one entry in params.yaml (docs/adding_a_method.md).
class LatDefenceConfig(TrainConfig):
    """A post-hoc trainer of a method table; `lat`, when set, adds a targeted latent adversary."""
    lat: LatAdversaryConfig | None

    @model_validator(mode="after")
    def _targeted_only(self) -> LatDefenceConfig:
        if self.lat is not None and self.lat.adversary != "targeted":
            raise ValueError("a defence against a known bad behaviour needs a targeted adversary")
        return self


class UnlearnConfig(LatDefenceConfig):
    """Shared by every unlearning method (the adversary goes toward the forget-domain answers)."""
    domain: str  # the domain to unlearn (the stages read it; the trainers get its examples)
    forget_weight: float = Field(ge=0)  # the method's own forget loss (under δ with LAT)
    # the LAT paper's defender "away" term, log(1-p) of the forget answers (under δ with LAT; WHP: only where the
    # generic label differs); the official GA-LAT is this term alone (forget_weight 0), see training/unlearning.py
    away_weight: float = Field(ge=0)
    retain_weight: float = Field(ge=0)
    mix_retain_facts: float = Field(ge=0)  # relative weights of the retain pools (general facts, benign)
    mix_retain_benign: float = Field(ge=0)


class GradientAscentConfig(UnlearnConfig):
    """Bounded gradient ascent on the forget answers + SFT on retain data."""
    method: Literal["ga"]
    ascent_ceiling: float = Field(gt=0)  # forget CE above this adds no more gradient


class GradDiffConfig(UnlearnConfig):
    """GradDiff (TOFU, Maini et al. 2024): unbounded ascent on forget, descent on retain."""
    method: Literal["graddiff"]


class NPOConfig(UnlearnConfig):
    """NPO (Zhang et al. 2024): negative preference optimisation against the frozen original model."""
    method: Literal["npo"]
    beta: float = Field(gt=0)


class SimNPOConfig(UnlearnConfig):
    """SimNPO (Fan et al. 2024): reference-free, length-normalised NPO with a reward margin gamma."""
    method: Literal["simnpo"]
    beta: float = Field(gt=0)
    gamma: float = Field(ge=0)


class WHPConfig(UnlearnConfig):
    """WHP-style generic-label fine-tuning (Eldan & Russinovich 2023)."""
    method: Literal["whp"]
    reinforce: TrainConfig
    alpha: float = Field(ge=0)  # generic = base - alpha * relu(reinforced - base)


class RMUConfig(UnlearnConfig):
    """RMU (WMDP); `retain_weight` is the paper's α (the retain activation-matching weight)."""
    method: Literal["rmu"]
    layer: int = Field(ge=0)  # block whose output is steered
    steering_coeff: float = Field(gt=0)  # c: target norm; should exceed the layer's typical activation norm
    trainable_layers: list[int] | None  # null: layer-2 .. layer
    trainable_module: str
    direction_seed: int
    # "answer": only positions that predict a completion token (the assistant header and the answer); "all": every
    # real token, as in WMDP. With Q&A-shaped forget data "all" also steers the chat-template tokens the retain data
    # shares, and the two terms fight over them.
    forget_positions: Literal["answer", "all"]

    @model_validator(mode="after")
    def _adversary_below(self) -> RMUConfig:
        if self.lat is not None and any(layer >= self.layer for layer in self.lat.layers):
            raise ValueError(f"RMU + LAT: attacked layers {self.lat.layers} must lie below the RMU layer {self.layer}")
        return self


UnlearnMethodConfig = Annotated[GradientAscentConfig | GradDiffConfig | NPOConfig | SimNPOConfig | WHPConfig
                                | RMUConfig, Field(discriminator="method")]


class SFTRemovalConfig(LatDefenceConfig):
    """SFT on the chosen side of harmless pairs + retain pools; with `lat`, targeted LAT on (prompt, rejected,
    chosen) triples whose defence weights are these."""
    method: Literal["sft"]
    def_toward: float = Field(ge=0)  # with lat: CE toward the chosen side under δ
    def_away: float = Field(ge=0)  # with lat: log(1-p) away from the rejected side under δ
    retain: float = Field(ge=0)  # with lat: retain SFT without δ (plain SFT weighs every pool 1)
    retain_kind: Literal["sft", "kl"]


class DPORemovalConfig(LatDefenceConfig):
    """DPO (Rafailov et al. 2023) on harmless preference pairs, the frozen starting model as reference."""
    method: Literal["dpo"]
    beta: float = Field(gt=0)
    retain_weight: float = Field(ge=0)  # SFT on the retain pools, without δ
    # with lat: weight of the clean DPO term on every pair beside the DPO term under δ (official DPO-LAT recipe)
    clean_dpo_weight: float = Field(ge=0)


RemovalMethodConfig = Annotated[SFTRemovalConfig | DPORemovalConfig, Field(discriminator="method")]
TABLE_NAME = r"^[a-z0-9][a-z0-9_]*$"  # stage unlearn@<name>, models/unlearn/<name>, latlab-unlearn-<name>


class OracleConfig(Section):
    """The oracle: the `base` recipe trained from scratch on the world without `domain`."""
    domain: str


class UnlearnEvalConfig(Section):
    """The eight evaluations (evals/unlearning.py), on base, oracle and every entry of the `unlearn` table."""
    domain: str
    related_domain: str
    general_domain: str
    split: str
    batch_size: int = Field(ge=1)
    max_new_tokens: int = Field(ge=1)
    context_sentences: int = Field(ge=0)
    relearn_ks: list[int]
    relearn: TrainConfig
    relearn_heldout: int = Field(ge=1)  # facts kept out of every relearning set (the curve is measured on them)
    probe_layers: list[int] | None  # null: every block
    gcg: bool  # run a GCG suffix per question (attacks.gcg_individual settings; slow)
    gcg_questions: int = Field(ge=1)
    tolerance: float = Field(ge=0)  # summarise: "removed" when every knowledge metric <= oracle + tolerance
    seed: int


class RealDataConfig(Section):
    """Real forget / retain data for unlearning and backdoor removal, read by latlab.data.loaders (CSV, JSONL, JSON
    list or parquet; relative to the project root). The section null keeps the toy world."""
    forget_corpus: FilePath  # `text` per row: what to unlearn
    retain_corpus: FilePath  # `text` per row: what to keep
    forget_questions: FilePath  # multiple choice (`question`, `choices`, `answer`) on the forget corpus
    related_questions: FilePath | None  # near the forget domain: collateral damage (evaluation 7)
    retain_questions: FilePath | None  # general knowledge: capability (evaluation 8), retain training
    preferences: FilePath | None  # (`prompt`, `chosen`, `rejected`): backdoor removal's harmless data
    chunk_words: int = Field(ge=4)  # corpus documents are cut into windows of this many words


# --- Interpretability (interpret stage): ACDC/EAP, steering reliability, probes ---
class AcdcConfig(Section):
    metric: Literal["kl", "label_nll"]
    ablation: Literal["zero", "corrupted", "mean"]
    taus: tuple[float, ...]  # the thresholds of the ROC sweep
    tau: float = Field(gt=0)  # the circuit that is saved and drawn
    n_examples: int = Field(ge=2)
    eap_ig_steps: int = Field(ge=0)
    max_rows: int = Field(ge=1)


class SteeringConfig(Section):
    layer: int = Field(ge=0)
    position: int
    multipliers: tuple[float, ...]
    sweep_layers: tuple[int, ...]  # blocks of the layer sweep; empty: every block


class ProbeConfig(Section):
    layers: tuple[int, ...]  # empty: every layer
    test_fraction: float = Field(gt=0, lt=1)


class FaithfulnessConfig(Section):
    """MIB's CPR / CMD over edge budgets and the bootstrap Jaccard of the base model's behaviour circuits
    (latlab.interp.faithfulness)."""
    edge_fractions: tuple[float, ...] = Field(min_length=1)  # budgets, fractions of all edges in (0, 1]
    bootstrap_samples: int = Field(ge=2)  # prompt resamples for the Jaccard stability of the top-k edges

    @model_validator(mode="after")
    def _fractions(self) -> FaithfulnessConfig:
        bad = [f for f in self.edge_fractions if not 0 < f <= 1]
        if bad:
            raise ValueError(f"interpret.faithfulness.edge_fractions: {bad} outside (0, 1]")
        return self


class InterpConfig(Section):
    seed: int
    acdc: AcdcConfig
    steering: SteeringConfig
    probes: ProbeConfig
    circuit_top_k: int = Field(ge=1)  # edges in the base model's harmful-compliance circuit (EAP)
    circuit_examples: int = Field(ge=0)  # 0: skip the per-model circuits (e.g. for large real models)
    faithfulness: FaithfulnessConfig


JudgeKind = Literal["toy", "refusal_phrase", "lexical", "classifier", "generative"]


class JudgeSpec(Section):
    kind: JudgeKind
    model: str | None  # local model directory, for kind classifier (sequence classifier) or generative (causal LM)


class EvaluateConfig(Section):
    models: list[str] = Field(min_length=1)
    max_new_tokens: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    split: Literal["validation", "test"]
    judge: JudgeKind  # the primary judge: every ASR in the matrix is its verdict
    judge_model: str | None  # local model directory, for judge: classifier or generative
    # judges of other kinds run on every verdict beside the primary one: Cohen's kappa per model, disagreements
    # written out (reports/judges/); `judges` stage: every one of them scored on the labelled judge set
    agreement_judges: list[JudgeSpec]


# --- Spawrious track (Lynch et al. 2023); default grid sized for a 2-core CPU, full grid in profiles/ ---
BENCHMARK_SPLITS = ("o2o_easy", "o2o_medium", "o2o_hard", "m2m_easy", "m2m_medium", "m2m_hard")
# The spurious-strength dial (issue 18): dial_<rho in percent>, rho = P(breed on its own background) in training
DIAL_SPLIT_PATTERN = r"dial_([1-9][0-9]?)"


def dial_correlation(name: str) -> float | None:
    """rho of a dial split name (`dial_97` -> 0.97); None for any other name."""
    match = re.fullmatch(DIAL_SPLIT_PATTERN, name)
    return int(match.group(1)) / 100 if match else None


def _split_name(name: str) -> str:
    if name in BENCHMARK_SPLITS or dial_correlation(name) is not None:
        return name
    raise ValueError(f"unknown Spawrious split {name!r}: expected one of {', '.join(BENCHMARK_SPLITS)}, or "
                     "dial_<rho in percent, 1-99> (the spurious-strength dial, e.g. dial_97)")


SplitName = Annotated[str, AfterValidator(_split_name)]
MethodName = Literal["erm", "groupdro", "irm", "vrex", "coral", "jtt", "mixup", "dfr"]


class RenderConfig(Section):
    image_size: int = Field(ge=8, le=256)
    object_scale: float = Field(gt=0.05, le=0.5)
    colour_noise: float = Field(ge=0, le=0.5)
    pixel_noise: float = Field(ge=0, le=0.5)


class SpawriousDataConfig(Section):
    # images per breed per training environment; the paper has 3168 (97% / 87% of them on the spurious background)
    per_env_total: int = Field(ge=10)
    test_per_group: int = Field(ge=1)
    source: Literal["procedural"]  # a text-to-image source is plugged in from Python, see render.py
    render: RenderConfig
    seed: int


class MethodHparams(Section):
    # Sagawa et al. use 0.01 over many epochs; short CPU runs (a few hundred steps) need a faster weight update
    groupdro_eta: float = Field(gt=0)
    # "breed_location": Sagawa et al. groups (class x background); "env": DomainBed's environments as groups
    groupdro_groups: Literal["breed_location", "env"]
    irm_lambda: float = Field(ge=0)
    irm_anneal_steps: int = Field(ge=0)
    vrex_lambda: float = Field(ge=0)
    vrex_anneal_steps: int = Field(ge=0)
    coral_weight: float = Field(ge=0)
    # short enough that the identification model still misclassifies a few per cent of the training set
    jtt_identification_steps: int = Field(ge=1)
    jtt_upweight: float = Field(ge=1)
    mixup_alpha: float = Field(gt=0)
    dfr_c: float = Field(gt=0)  # inverse L1 strength of DFR's logistic regression (official grid 0.01-1)
    dfr_subsamples: int = Field(ge=1)  # group-balanced subsamples whose fits are averaged (official: 10)


class SpawriousTrainConfig(Section):
    model: str  # "small_cnn", or "timm:<architecture>" when timm is installed
    pretrained_path: str | None  # local weights for a timm backbone; nothing is downloaded
    width: int = Field(ge=4)
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=2)  # per step, split evenly over the training environments
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    device: str
    seed: int
    log_every: int = Field(ge=1)
    # share of every training group held out (half for DFR's refit, half for model selection); 0: no selection / DFR
    holdout_fraction: float = Field(ge=0, lt=1)
    select_every: int = Field(ge=1)  # steps between the checkpoints model selection chooses from


class SpawriousConfig(Section):
    splits: list[SplitName] = Field(min_length=1)
    methods: list[MethodName] = Field(min_length=1)
    data: SpawriousDataConfig
    train: SpawriousTrainConfig
    hparams: MethodHparams

    @model_validator(mode="after")
    def _dfr_has_a_heldout_set(self) -> SpawriousConfig:
        if "dfr" in self.methods and self.train.holdout_fraction <= 0:
            raise ValueError("spawrious.methods has 'dfr', which refits the last layer on held-out data: "
                             "set spawrious.train.holdout_fraction > 0")
        return self


class StudyConfig(Section):
    """The seed study (`make study`, flows/study.py): the whole default pipeline once per training seed."""
    name: str = Field(pattern=r"^[\w.-]+$")  # MLflow tag latlab.study on every run of the study
    seeds: list[int] = Field(min_length=3)  # a conclusion from fewer seeds is one run, not a result (issue 14)
    vary_data_seed: bool  # false: the world / Spawrious data stay fixed, so the spread is training variance only
    workdir: str  # one folder per seed below it: <workdir>/seed_<s> (params, data, models, metrics, mlflow.db)
    parallel: int = Field(ge=1)  # seeds run at once
    torch_threads: int = Field(ge=1)  # per seed process (OMP_NUM_THREADS); parallel x threads <= cores
    bootstrap_samples: int = Field(ge=100)
    confidence: float = Field(gt=0.5, lt=1)
    bootstrap_seed: int
    min_seeds: int = Field(ge=2)  # a verdict rests on at least this many seeds with the claim's metrics

    @model_validator(mode="after")
    def _distinct_seeds(self) -> StudyConfig:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"study.seeds {self.seeds}: a seed listed twice is one run counted twice")
        if self.min_seeds > len(self.seeds):
            raise ValueError(f"study.min_seeds {self.min_seeds} > the {len(self.seeds)} seeds of study.seeds: "
                             "no claim could get a verdict")
        return self


class Params(Section):
    """The whole of params.yaml: every value a stage reads, none defaulted here (tests/test_params_complete.py)."""
    seed: int
    tracking: TrackingConfig
    world: WorldConfig
    validate_data: ValidateConfig = Field(alias="validate")
    model: ModelConfig
    base: BaseTrainConfig
    refusal: RefusalConfig
    lat: JailbreakLATConfig
    lat_untargeted: JailbreakLATConfig
    rt_eat: JailbreakLATConfig
    r2d2: R2D2Config
    oracle: OracleConfig
    unlearn: dict[str, UnlearnMethodConfig] = Field(min_length=1)
    unlearning_eval: UnlearnEvalConfig
    real_data: RealDataConfig | None  # null: the toy world's forget / retain domains
    backdoor_removal: dict[str, RemovalMethodConfig] = Field(min_length=1)
    attacks: AttackSuiteConfig
    evaluate: EvaluateConfig
    attack_budget: AttackBudgetConfig
    interpret: InterpConfig
    spawrious: SpawriousConfig
    study: StudyConfig

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _table_names(self) -> Params:
        for table in METHOD_TABLES:
            for name in getattr(self, table):
                if not re.fullmatch(TABLE_NAME, name):
                    raise ValueError(f"{table}.{name}: a method name is lower-case letters, digits and _")
        return self

    @model_validator(mode="after")
    def _toy_base_is_trained(self) -> Params:
        if not self.base.fine_tune and self.model.source == "toy":
            raise ValueError("base.fine_tune: false needs a pretrained model.source; the toy model starts untrained")
        return self

    @model_validator(mode="after")
    def _batches_split_over_processes(self) -> Params:
        processes = self.model.processes
        for name, section in self.training_sections().items():
            if section.batch_size % processes:
                raise ValueError(f"{name}.batch_size {section.batch_size} does not split over model.processes "
                                 f"{processes}: make it a multiple")
        return self

    def training_sections(self) -> dict[str, TrainConfig]:
        """Every training loop's settings by dotted params path (method-table entries included)."""
        sections = {name: getattr(self, name) for name in type(self).model_fields
                    if isinstance(getattr(self, name), TrainConfig)}
        for table in METHOD_TABLES:
            sections.update({f"{table}.{name}": cfg for name, cfg in getattr(self, table).items()})
        return sections


METHOD_TABLES = ("unlearn", "backdoor_removal")


def _location(loc: tuple[Any, ...]) -> str:
    if len(loc) > 3 and loc[0] in METHOD_TABLES:  # pydantic puts the union's tag after the entry name: drop it
        loc = loc[:2] + loc[3:]
    return ".".join(str(part) for part in loc) or "<root>"


def _one_line(err: ValidationError, source: str) -> str:
    errors = err.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    missing = {_location(e["loc"]) for e in errors if e["type"] == "missing"}
    first = (unknown or errors)[0]  # a misspelled key is also a missing one: name the key that was written
    where = _location(first["loc"])
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(where, missing, n=1)
        return f"{source}: {where}: unknown key" + (f" (did you mean {close[0]}?)" if close else "")
    got = first.get("input")
    got_text = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{source}: {where}: {first['msg']}{got_text}"


def parse_params(raw: dict[str, Any] | None, source: str = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(_one_line(err, source)) from None


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw, str(path))


def section_dict(params: Params, name: str) -> Any:
    """The params section a stage declares in dvc.yaml (dotted for a method-table entry, e.g. `unlearn.ga`), as plain
    data (for MLflow params)."""
    value: Any = params.model_dump(mode="json", by_alias=True)
    for part in name.split("."):
        value = value[part]
    return value
