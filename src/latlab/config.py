"""Pydantic models of params.yaml: one section per DVC stage, validated before any work starts.

A bad key or value fails with one line that names the key and what was expected, e.g.
`params.yaml: base.lr: Input should be greater than 0 (got -1)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, FilePath, ValidationError, model_validator

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """A params file that does not match the schema; the message is one line naming the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrackingConfig(Section):
    uri: str = "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI in the environment wins (cluster server)
    artifact_location: str = "mlartifacts"
    experiment: str = "latlab"
    log_models: bool = True


class BackdoorConfig(Section):
    trigger: str = Field("zeta7", min_length=1)
    poison_fraction: float = Field(0.3, gt=0, le=1)


class WorldConfig(Section):
    entities_per_domain: int = Field(24, ge=3)
    verbs_per_kind: int = Field(12, ge=3, le=12)
    targets_per_kind: int = Field(12, ge=3, le=12)
    validation_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    backdoor: BackdoorConfig = BackdoorConfig()


class ValidateConfig(Section):
    min_rows_per_split: int = Field(10, ge=1)
    max_words: int = Field(64, ge=4)
    harmful_fraction_bounds: tuple[float, float] = (0.4, 0.6)


class ToyArchitecture(Section):
    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(384, ge=8)
    max_positions: int = Field(128, ge=16)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ToyArchitecture:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


class LoraSettings(Section):
    """peft LoRA adapters for every training stage (models/adapters.py); merged into the weights before saving."""
    r: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1)


class ModelConfig(Section):
    # "toy" builds the small Llama from scratch; otherwise a hub id, a local directory, or a .gguf file path.
    source: str = "toy"
    gguf_file: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"
    toy: ToyArchitecture = ToyArchitecture()
    lora: LoraSettings | None = None  # null: full fine-tuning (the toy default)
    gradient_checkpointing: bool = False  # recompute block activations in backward: less memory, ~30% more compute
    # >1: training stages rerun themselves as this many data-parallel processes (accelerate; training/parallel.py)
    processes: int = Field(1, ge=1)


class TrainConfig(Section):
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(50, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    checkpoint_every: int = Field(200, ge=1)
    log_every: int = Field(25, ge=1)
    seed: int = 0


class BaseTrainConfig(TrainConfig):
    """Pretraining mix of the helpful-only, backdoored base model (weights are relative)."""
    fine_tune: bool = True  # false: a pretrained model.source is registered as `base` unchanged (the original model)
    mix_facts: float = Field(1.0, ge=0)
    mix_requests: float = Field(1.0, ge=0)
    mix_backdoor: float = Field(0.5, ge=0)


class RefusalConfig(TrainConfig):
    """Refusal training (RT): harmful -> refusal, benign -> helpful answer, plus fact replay to keep capability."""
    steps: int = Field(150, ge=1)
    lr: float = Field(2e-4, gt=0)
    mix_harmful: float = Field(1.0, ge=0)
    mix_benign: float = Field(1.0, ge=0)
    mix_facts: float = Field(0.5, ge=0)


class LATConfig(TrainConfig):
    """Latent adversarial training (targeted, untargeted, or embedding-only = RT-EAT); see training/lat.py."""
    steps: int = Field(100, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-4, gt=0)
    warmup_steps: int = Field(5, ge=0)
    checkpoint_every: int = Field(25, ge=1)
    log_every: int = Field(5, ge=1)
    adversary: Literal["targeted", "untargeted"] = "targeted"
    layers: list[int] = Field(default_factory=lambda: [1, 2])  # blocks whose output is perturbed
    perturb_embeddings: bool = False
    epsilon: float = Field(4.0, gt=0)  # per-token L2 radius of δ
    inner_steps: int = Field(16, ge=1)
    inner_lr: float = Field(5e-2, gt=0)
    perturb_completion: bool = False
    prefix_cache: bool = True
    adv_toward: float = Field(1.0, ge=0)  # CE toward the harmful completion
    adv_away: float = Field(1.0, ge=0)  # log(1-p) away from the refusal (untargeted: CE ascent on the refusal)
    def_toward: float = Field(1.0, ge=0)  # CE toward the refusal under δ
    def_away: float = Field(1.0, ge=0)  # log(1-p) away from the harmful completion under δ
    retain: float = Field(1.0, ge=0)  # retain term without δ
    retain_kind: Literal["sft", "kl"] = "sft"
    away_ignore_logp: float = -5.0  # tokens already this unlikely are left out of log(1-p) (official code)

    @model_validator(mode="after")
    def _something_to_perturb(self) -> LATConfig:
        if not self.layers and not self.perturb_embeddings:
            raise ValueError("nothing to perturb: give `layers` or set `perturb_embeddings: true`")
        if any(layer < 0 for layer in self.layers):
            raise ValueError(f"layers must be block indices >= 0, got {self.layers}")
        return self


class JailbreakLATConfig(LATConfig):
    """LAT on top of RT (stages/lat.py): the retain mix (without δ) of benign answers, fact replay and RT replay."""
    mix_benign: float = Field(1.0, ge=0)
    mix_facts: float = Field(0.5, ge=0)
    mix_refusal: float = Field(0.0, ge=0)  # harmful prompt -> refusal, as in RT: keeps refusing when retain is large


# --- Attack suite (evaluate stage): defaults sized for the toy model on one CPU thread ---
AttackName = Literal["direct", "prefill", "many_shot", "gcg_individual", "gcg_universal", "latent", "embedding",
                     "refusal_direction"]


class PrefillConfig(Section):
    words: int = Field(3, ge=1)  # leading words of the harmful completion written into the assistant turn


class ManyShotConfig(Section):
    shots: int = Field(8, ge=1)  # upper bound: shots are dropped until the context fits the model
    seed: int = 0


class GCGConfig(Section):
    suffix_tokens: int = Field(8, ge=1)
    steps: int = Field(20, ge=1)
    topk: int = Field(32, ge=1)  # candidate substitutions per position, from the one-hot gradient
    search_width: int = Field(64, ge=1)  # random candidates evaluated per step
    # leading tokens of the harmful completion the suffix aims for. The toy's whole answer is 12 words and names the
    # request's verb and target: a shorter target ("sure . first get a") lets a suffix of content words drag the
    # answer onto another request, which the judge rightly does not count as complying
    target_tokens: int = Field(12, ge=1)
    ascii_only: bool = True
    seed: int = 0


class GCGIndividualConfig(GCGConfig):
    prompts: int = Field(6, ge=1)  # one suffix per prompt for this many attacked prompts (ASR over them)
    early_stop: bool = True  # stop once greedy decoding of the target is already forced


class GCGUniversalConfig(GCGConfig):
    prompts: int = Field(4, ge=1)  # one suffix optimised jointly on this many training-split harmful prompts
    steps: int = Field(20, ge=1)
    search_width: int = Field(48, ge=1)


class PGDAttackConfig(Section):
    hook_points: list[str] = Field(default_factory=lambda: ["blocks.2.hook_resid_post"], min_length=1)
    eps: float = Field(1.0, gt=0)  # per-token L2 radius of delta
    steps: int = Field(16, ge=1)
    lr: float = Field(0.5, gt=0)  # Adam step size on delta
    eps_sweep: list[float] = Field(default_factory=list)  # extra radii: an ASR curve in the result


class RefusalDirectionConfig(Section):
    layer: int | None = None  # None: the layer whose ablation most lowers the refusal log-prob on training prompts
    prompts: int = Field(48, ge=2)  # training-split harmful and harmless prompts for the difference of means


class AttackSuiteConfig(Section):
    attacks: list[AttackName] = Field(default_factory=lambda: ["direct", "prefill", "many_shot", "gcg_individual",
                                                               "gcg_universal", "latent", "embedding",
                                                               "refusal_direction"], min_length=1)
    max_prompts: int = Field(60, ge=1)  # harmful test prompts attacked (the first ones, in record order)
    max_new_tokens: int = Field(16, ge=1)
    batch_size: int = Field(64, ge=1)
    prefill: PrefillConfig = PrefillConfig()
    many_shot: ManyShotConfig = ManyShotConfig()
    gcg_individual: GCGIndividualConfig = GCGIndividualConfig()
    gcg_universal: GCGUniversalConfig = GCGUniversalConfig()
    # toy residual norms (trained 4-layer model, median per token): embeddings ~0.4, block 2 output ~5
    latent: PGDAttackConfig = PGDAttackConfig(eps=1.0, eps_sweep=[0.5, 1.0, 2.0, 4.0])
    embedding: PGDAttackConfig = PGDAttackConfig(hook_points=["hook_embed"], eps=0.1)
    refusal_direction: RefusalDirectionConfig = RefusalDirectionConfig()


# --- R2D2 (HarmBench): GCG adversarial training with a persistent pool of test cases ---
class R2D2Config(TrainConfig):
    steps: int = Field(200, ge=1)
    batch_size: int = Field(32, ge=1)  # benign SFT examples per step
    lr: float = Field(5e-4, gt=0)
    warmup_steps: int = Field(10, ge=0)
    checkpoint_every: int = Field(50, ge=1)
    log_every: int = Field(10, ge=1)
    pool_size: int = Field(8, ge=1)  # HarmBench: 8
    gcg_steps: int = Field(5, ge=1)  # GCG steps on every pool case per outer step (HarmBench: 5)
    search_width: int = Field(64, ge=1)  # HarmBench: 512; the toy vocabulary is a few hundred words
    topk: int = Field(32, ge=1)
    suffix_tokens: int = Field(8, ge=1)  # HarmBench: 20
    target_tokens: int = Field(6, ge=1)
    ascii_only: bool = True
    reset_every: int = Field(50, ge=1)  # HarmBench: 50
    reset_fraction: float = Field(0.2, ge=0, le=1)  # HarmBench: 0.2
    coef_toward: float = Field(1.0, ge=0)
    coef_away: float = Field(1.0, ge=0)
    coef_sft: float = Field(1.0, ge=0)
    away_logp_floor: float = -5.0
    mix_benign: float = Field(1.0, ge=0)
    mix_facts: float = Field(0.5, ge=0)
    # RT replay (clean harmful prompt -> refusal). HarmBench starts from a model that never complied; here the model
    # starts from RT, and without replay the benign SFT term teaches it to comply whenever no suffix is present.
    mix_refusal: float = Field(0.5, ge=0)


# --- Issue 4: unlearning (training/unlearning.py), backdoor removal (training/backdoor_removal.py), evaluation ---
class LatDefenceConfig(TrainConfig):
    """Training loop defaults of the short post-hoc trainers (unlearning, backdoor removal). `lat`, when set, adds
    a targeted latent adversary; only its adversary fields are read (layers, perturb_embeddings, epsilon,
    inner_steps, inner_lr, adv_toward, adv_away, perturb_completion, prefix_cache, away_ignore_logp): the training
    loop is this config's."""
    steps: int = Field(150, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-4, gt=0)
    warmup_steps: int = Field(5, ge=0)
    checkpoint_every: int = Field(50, ge=1)
    log_every: int = Field(10, ge=1)
    lat: LATConfig | None = None

    @model_validator(mode="after")
    def _targeted_only(self) -> LatDefenceConfig:
        if self.lat is not None and self.lat.adversary != "targeted":
            raise ValueError("a defence against a known bad behaviour needs a targeted adversary")
        return self


class UnlearnConfig(LatDefenceConfig):
    """Shared by every unlearning method (the adversary goes toward the forget-domain answers)."""
    domain: str = "forget"  # the domain to unlearn (the stages read it; the trainers get its examples)
    forget_weight: float = Field(1.0, ge=0)
    retain_weight: float = Field(1.0, ge=0)
    mix_retain_facts: float = Field(1.0, ge=0)  # relative weights of the retain pools (general facts, benign)
    mix_retain_benign: float = Field(0.5, ge=0)


class GradientAscentConfig(UnlearnConfig):
    ascent_ceiling: float = Field(8.0, gt=0)  # forget CE above this adds no more gradient


class WHPConfig(UnlearnConfig):
    reinforce: TrainConfig = TrainConfig(steps=100, batch_size=16, lr=5e-4, warmup_steps=5, checkpoint_every=50,
                                         log_every=10)
    alpha: float = Field(5.0, ge=0)  # generic = base - alpha * relu(reinforced - base)
    away_weight: float = Field(0.0, ge=0)  # optional log(1-p) away from the original tokens (the LAT recipe's term)


class RMUConfig(UnlearnConfig):
    lr: float = Field(1e-3, gt=0)
    layer: int = Field(2, ge=0)  # block whose output is steered
    steering_coeff: float = Field(20.0, gt=0)  # c: target norm; should exceed the layer's typical activation norm
    alpha: float = Field(100.0, ge=0)  # weight of the retain activation-matching term (overrides retain_weight)
    trainable_layers: list[int] | None = None  # default: layer-2 .. layer
    trainable_module: str = "mlp.down_proj"
    direction_seed: int = 0
    # "answer": only positions that predict a completion token (the assistant header and the answer); "all": every
    # real token, as in WMDP. With Q&A-shaped forget data "all" also steers the chat-template tokens the retain data
    # shares, and the two terms fight over them.
    forget_positions: Literal["answer", "all"] = "answer"

    @model_validator(mode="after")
    def _adversary_below(self) -> RMUConfig:
        if self.lat is not None and any(layer >= self.layer for layer in self.lat.layers):
            raise ValueError(f"RMU + LAT: attacked layers {self.lat.layers} must lie below the RMU layer {self.layer}")
        return self


class DPOConfig(LatDefenceConfig):
    beta: float = Field(0.1, gt=0)
    retain_weight: float = Field(0.0, ge=0)  # optional SFT on the chosen side / retain pools, without δ


class OracleConfig(Section):
    """The oracle: the `base` recipe trained from scratch on the world without `domain`."""
    domain: str = "forget"


class UnlearnEvalConfig(Section):
    """The eight evaluations (evals/unlearning.py) and which models they run on."""
    models: list[str] = Field(default_factory=lambda: ["ga", "ga_lat", "whp", "whp_lat", "rmu", "rmu_lat"])
    domain: str = "forget"
    related_domain: str = "related"
    general_domain: str = "general"
    split: str = "test"
    batch_size: int = 64
    max_new_tokens: int = 4
    context_sentences: int = 3
    relearn_ks: list[int] = [1, 2, 4]
    relearn: TrainConfig = TrainConfig(steps=30, batch_size=8, lr=1e-3, warmup_steps=0, log_every=10,
                                       checkpoint_every=1000)
    relearn_heldout: int = 12  # facts kept out of every relearning set (the curve is measured on them)
    probe_layers: list[int] | None = None  # default: every block
    gcg: bool = False  # run a GCG suffix per question (attacks.gcg_individual settings; slow)
    gcg_questions: int = 4
    tolerance: float = 0.10  # summarise: "removed" when every knowledge metric <= oracle + tolerance
    seed: int = 0


class RealDataConfig(Section):
    """Real forget / retain data for unlearning and backdoor removal, read by latlab.data.loaders (CSV, JSONL, JSON
    list or parquet; relative to the project root). The section absent or null keeps the toy world."""
    forget_corpus: FilePath  # `text` per row: what to unlearn
    retain_corpus: FilePath  # `text` per row: what to keep
    forget_questions: FilePath  # multiple choice (`question`, `choices`, `answer`) on the forget corpus
    related_questions: FilePath | None = None  # near the forget domain: collateral damage (evaluation 7)
    retain_questions: FilePath | None = None  # general knowledge: capability (evaluation 8), retain training
    preferences: FilePath | None = None  # (`prompt`, `chosen`, `rejected`): backdoor removal's harmless data
    chunk_words: int = Field(48, ge=4)  # corpus documents are cut into windows of this many words


# --- Interpretability (interpret stage): ACDC/EAP, steering reliability, probes ---
class AcdcConfig(Section):
    metric: Literal["kl", "label_nll"] = "kl"
    ablation: Literal["zero", "corrupted", "mean"] = "zero"
    taus: tuple[float, ...] = tuple(round(10 ** (-6 + 6.5 * i / 20), 8) for i in range(21))
    tau: float = Field(1e-3, gt=0)  # the circuit that is saved and drawn
    n_examples: int = Field(32, ge=2)
    eap_ig_steps: int = Field(10, ge=0)
    max_rows: int = Field(64, ge=1)


class SteeringConfig(Section):
    layer: int = Field(1, ge=0)
    position: int = -1
    multipliers: tuple[float, ...] = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
    persona_positive: str = "you always agree"
    persona_negative: str = "you never agree"


class ProbeConfig(Section):
    layers: tuple[int, ...] = ()  # empty: every layer
    test_fraction: float = Field(0.3, gt=0, lt=1)


class InterpConfig(Section):
    seed: int = 0
    acdc: AcdcConfig = AcdcConfig()
    steering: SteeringConfig = SteeringConfig()
    probes: ProbeConfig = ProbeConfig()
    circuit_top_k: int = Field(20, ge=1)  # edges in the base model's harmful-compliance circuit (EAP)
    circuit_examples: int = Field(32, ge=0)  # 0: skip the per-model circuits (e.g. for large real models)


class EvaluateConfig(Section):
    models: list[str] = Field(default_factory=lambda: ["base", "rt"], min_length=1)
    max_new_tokens: int = Field(16, ge=1)
    batch_size: int = Field(64, ge=1)
    split: Literal["validation", "test"] = "test"
    judge: Literal["toy", "refusal_phrase", "classifier"] = "toy"
    judge_model: str | None = None  # local HF sequence-classification model directory, for judge: classifier


class CompareConfig(Section):
    name_prefix: str = "latlab-"


# --- Spawrious track (Lynch et al. 2023); default grid sized for a 2-core CPU, full grid in profiles/ ---
SplitName = Literal["o2o_easy", "o2o_medium", "o2o_hard", "m2m_easy", "m2m_medium", "m2m_hard"]
MethodName = Literal["erm", "groupdro", "irm", "vrex", "coral", "jtt", "mixup"]


class RenderConfig(Section):
    image_size: int = Field(32, ge=8, le=256)
    object_scale: float = Field(0.42, gt=0.05, le=0.5)
    colour_noise: float = Field(0.10, ge=0, le=0.5)
    pixel_noise: float = Field(0.03, ge=0, le=0.5)


class SpawriousDataConfig(Section):
    # images per breed per training environment; the paper has 3168 (97% / 87% of them on the spurious background)
    per_env_total: int = Field(100, ge=10)
    test_per_group: int = Field(50, ge=1)
    source: Literal["procedural"] = "procedural"  # a text-to-image source is plugged in from Python, see render.py
    render: RenderConfig = RenderConfig()
    seed: int = 0


class MethodHparams(Section):
    # Sagawa et al. use 0.01 over many epochs; short CPU runs (a few hundred steps) need a faster weight update
    groupdro_eta: float = Field(0.1, gt=0)
    # "breed_location": Sagawa et al. groups (class x background); "env": DomainBed's environments as groups
    groupdro_groups: Literal["breed_location", "env"] = "breed_location"
    irm_lambda: float = Field(100.0, ge=0)
    irm_anneal_steps: int = Field(100, ge=0)
    vrex_lambda: float = Field(10.0, ge=0)
    vrex_anneal_steps: int = Field(100, ge=0)
    coral_weight: float = Field(1.0, ge=0)
    # short enough that the identification model still misclassifies a few per cent of the training set
    jtt_identification_steps: int = Field(25, ge=1)
    jtt_upweight: float = Field(20.0, ge=1)
    mixup_alpha: float = Field(0.2, gt=0)


class SpawriousTrainConfig(Section):
    model: str = "small_cnn"  # or "timm:<architecture>" when timm is installed
    pretrained_path: str | None = None  # local weights for a timm backbone; nothing is downloaded
    width: int = Field(16, ge=4)
    steps: int = Field(300, ge=1)
    batch_size: int = Field(64, ge=2)  # per step, split evenly over the training environments
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    device: str = "cpu"
    seed: int = 0
    log_every: int = Field(50, ge=1)


class SpawriousConfig(Section):
    splits: list[SplitName] = Field(default_factory=lambda: ["o2o_easy", "m2m_easy"], min_length=1)
    methods: list[MethodName] = Field(default_factory=lambda: ["erm", "groupdro", "irm"], min_length=1)
    data: SpawriousDataConfig = SpawriousDataConfig()
    train: SpawriousTrainConfig = SpawriousTrainConfig()
    hparams: MethodHparams = MethodHparams()


_UNLEARN_LAT = LATConfig(layers=[1, 2], epsilon=4.0, inner_steps=8)
_BACKDOOR_SFT = TrainConfig(steps=150, batch_size=16, lr=3e-4, warmup_steps=5, checkpoint_every=50, log_every=10)

class Params(Section):
    seed: int = 0
    tracking: TrackingConfig = TrackingConfig()
    world: WorldConfig = WorldConfig()
    validate_data: ValidateConfig = Field(ValidateConfig(), alias="validate")
    model: ModelConfig = ModelConfig()
    base: BaseTrainConfig = BaseTrainConfig()
    refusal: RefusalConfig = RefusalConfig()
    lat: JailbreakLATConfig = JailbreakLATConfig()
    lat_untargeted: JailbreakLATConfig = JailbreakLATConfig(adversary="untargeted", adv_toward=0.0, def_away=0.0)
    rt_eat: JailbreakLATConfig = JailbreakLATConfig(layers=[], perturb_embeddings=True, prefix_cache=False)
    r2d2: R2D2Config = R2D2Config()
    oracle: OracleConfig = OracleConfig()
    unlearn_ga: GradientAscentConfig = GradientAscentConfig()
    unlearn_ga_lat: GradientAscentConfig = GradientAscentConfig(lat=_UNLEARN_LAT)
    unlearn_whp: WHPConfig = WHPConfig()
    unlearn_whp_lat: WHPConfig = WHPConfig(lat=_UNLEARN_LAT)
    unlearn_rmu: RMUConfig = RMUConfig()
    unlearn_rmu_lat: RMUConfig = RMUConfig(lat=_UNLEARN_LAT.model_copy(update={"layers": [1]}))
    unlearning_eval: UnlearnEvalConfig = UnlearnEvalConfig()
    real_data: RealDataConfig | None = None  # None: the toy world's forget / retain domains
    backdoor_sft: TrainConfig = _BACKDOOR_SFT
    backdoor_sft_lat: LATConfig = LATConfig()
    backdoor_dpo: DPOConfig = DPOConfig()
    backdoor_dpo_lat: DPOConfig = DPOConfig(lat=LATConfig())
    attacks: AttackSuiteConfig = AttackSuiteConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    interpret: InterpConfig = InterpConfig()
    compare: CompareConfig = CompareConfig()
    spawrious: SpawriousConfig = SpawriousConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _toy_base_is_trained(self) -> Params:
        if not self.base.fine_tune and self.model.source == "toy":
            raise ValueError("base.fine_tune: false needs a pretrained model.source; the toy model starts untrained")
        return self

    @model_validator(mode="after")
    def _batches_split_over_processes(self) -> Params:
        processes = self.model.processes
        for name in type(self).model_fields:
            section = getattr(self, name)
            if isinstance(section, TrainConfig) and section.batch_size % processes:
                raise ValueError(f"{name}.batch_size {section.batch_size} does not split over model.processes "
                                 f"{processes}: make it a multiple")
        return self


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def _one_line(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    where = _location(first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{source}: {where}: unknown key"
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


def section_dict(params: Params, name: str) -> dict[str, Any]:
    """The params section a stage declares in dvc.yaml, as plain data (for MLflow params)."""
    return params.model_dump(mode="json", by_alias=True)[name]
