"""Typed stage specs: the composed Hydra config, once, as frozen dataclasses; every check raises ConfigError.

Each config group has one spec whose fields are its keys, with the same names; the defaults live in
the YAML configs only (a spec built from a config missing a key is an error, not a silent default).
``RunSpec.from_config(cfg)`` builds them all; ``check(spec, stage)`` rejects what cannot run.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from raydd.errors import RayddError

DISTILL_METHODS = ("mtt", "datm", "ast", "mct")
QUANTIZE_METHODS = ("ddoq", "d4m")
BASELINES = ("random", "full")
EXPERT_VARIANTS = ("plain", "smooth", "ftd")
EXPERT_FORMS = ("full", "waypoints", "convex")
FORM_POINTS = {"waypoints": "waypoints", "convex": "convex_points"}  # the experts key that sizes each compressed form
FLOAT_EPOCH_FORMS = tuple(FORM_POINTS)  # forms read at any float epoch
EXPERT_DTYPES = ("float32", "float16")
CLIP_MODES = ("scale", "clip")
PENALTY_TARGETS = ("input", "params")
UNROLLS = ("plain", "constant_memory")
HEAPS = ("auto", "jemalloc", "reuse", "default")
LR_PARAMS = ("plain", "log")
WINDOWS = ("fixed", "difficulty")
BALANCES = ("epoch", "class")
WIDENED = ("convnet", "resnet18", "vgg11")  # the models that take a width
INITS = ("real", "correct", "correct_pool", "kmeans", "kmeans_medoid", "mean")
SOFT_LABEL_INITS = ("correct", "mean")
PERTURB_MODES = ("filter", "rms")
ENCODERS = ("pixel", "pca", "autoencoder", "vae")
PROTOTYPES = ("centroid", "medoid")
SCHEDULERS = ("asha", "fifo")


class ConfigError(RayddError, ValueError):
    """A configuration that cannot run; the message names the problem."""


S = TypeVar("S")


def _build(cls: type[S], values: dict[str, Any], group: str, optional: tuple[str, ...] = ()) -> S:
    """``cls`` from a config group: every field must be there (``optional`` ones default to None); no extras."""
    names = [f.name for f in fields(cls)]
    missing = [n for n in names if n not in values and n not in optional]
    unknown = sorted(set(values) - set(names))
    if missing or unknown:
        raise ConfigError(f"{group}: " + "; ".join([*(["missing " + ", ".join(missing)] if missing else []),
                                                   *(["unknown " + ", ".join(unknown)] if unknown else [])]))
    for name, hint in typing.get_type_hints(cls).items():
        _check_type(values.get(name), hint, f"{group}.{name}")
    return cls(**{n: values.get(n) for n in names})


SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _check_type(value: Any, hint: Any, key: str) -> None:
    """One ``raydd: error:`` line for a scalar field given the wrong kind of value (an int is a number, a bool
    is neither); fields of other types are the group checks' business."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    scalars = [a for a in args if a in SCALARS]
    if not scalars or len(scalars) + (type(None) in args) < len(args) or (value is None and type(None) in args):
        return
    ok = any(isinstance(value, bool) if t is bool else
             isinstance(value, t if t is not float else (int, float)) and not isinstance(value, bool) for t in scalars)
    if not ok:
        kinds = " or ".join([SCALARS[t] for t in scalars] + (["null"] if type(None) in args else []))
        raise ConfigError(f"{key} must be {kinds}, got {value!r}")


@dataclass(frozen=True)
class Resources:
    """What one task, actor or worker of a stage asks Ray for."""

    cpus: float
    gpus: float = 0.0


@dataclass(frozen=True)
class DatasetCfg:
    """The ``dataset`` group: which dataset, where it is read from; None means the registry's value."""

    name: str
    root: str | None = None
    uri: str | None = None
    endpoint_url: str | None = None
    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int | None = None  # the generated dataset's (imagenet1k_standin) keys
    images_per_class: int | None = None
    test_per_class: int | None = None
    seed: int | None = None

    @classmethod
    def from_config(cls, d: dict[str, Any]) -> DatasetCfg:
        return _build(cls, d, "dataset", optional=("root", "uri", "endpoint_url", "image_size", "mean", "std",
                                                   "num_classes", "images_per_class", "test_per_class", "seed"))


@dataclass(frozen=True)
class ModelSpec:
    """The ``model`` group; ``depth``/``act``/``pooling`` are the ConvNet's, ``width`` the ConvNet's channels or
    ResNet-18's / VGG-11's first-stage channels (None: the class's own: 128, 64, 64)."""

    name: str
    norm: str
    depth: int | None = None
    width: int | None = None
    act: str | None = None
    pooling: str | None = None

    @classmethod
    def from_config(cls, m: dict[str, Any]) -> ModelSpec:
        return _build(cls, m, "model", optional=("depth", "width", "act", "pooling"))

    @property
    def tag(self) -> str:
        """How store and set names call it: ``convnet3w16`` (``…batch``/``…none`` for other norms), ``resnet18``."""
        if self.name != "convnet":
            return self.name if self.width is None else f"{self.name}w{self.width}"
        return f"convnet{self.depth}w{self.width}{'' if self.norm == 'instance' else self.norm}"


@dataclass(frozen=True)
class ExpertsSpec:
    """The ``experts`` group: how experts train (plain MTT, smooth AST or FTD's GSAM) and how they are stored."""

    variant: str
    num: int
    epochs: int
    lr: float
    lr_decay: float
    lr_decay_epoch: int | None
    momentum: float
    weight_decay: float
    batch_size: int
    dsa: bool
    form: str
    dtype: str
    convex_points: int
    waypoints: int
    clip_epochs: int
    clip_mode: str
    clip_value: float
    gradient_penalty: float
    gradient_penalty_on: str
    gsam_rho_max: float
    gsam_rho_min: float
    gsam_alpha: float
    gsam_adaptive: bool
    cpus_per_expert: float
    gpus_per_expert: float
    max_retries: int
    store: str | None
    amp: bool

    @classmethod
    def from_config(cls, e: dict[str, Any]) -> ExpertsSpec:
        return _build(cls, e, "experts")

    @property
    def resources(self) -> Resources:
        return Resources(self.cpus_per_expert, self.gpus_per_expert)

    @property
    def points(self) -> int:
        """The form's size: ``waypoints`` (waypoints form), ``convex_points`` (convex); 0 for the full form."""
        return getattr(self, FORM_POINTS[self.form]) if self.form in FORM_POINTS else 0


@dataclass(frozen=True)
class DistillSpec:
    """The ``distill`` group, one field per key (trajectory matching: MTT, DATM, AST, MCT)."""

    iterations: int
    syn_steps: int
    expert_epochs: int
    window: str
    min_start_epoch: int
    max_start_epoch: int
    lr_img: float
    lr_lr: float
    lr_init: float
    lr_param: str
    lr_backoff: float
    lr_max_step: float | None
    max_rejected_fraction: float
    lr_label: float
    batch_syn: int | None
    momentum_img: float
    unroll: str
    kept_graphs: int
    heap: str
    init: str
    soft_labels: bool
    soft_label_init: str
    window_grow_iters: int
    max_start_epoch_init: int | None
    loss_threshold: float | None
    threshold_patience: int | None
    ema: float
    intermediate_weight: float
    intermediate_points: int | None
    balanced_inner_loss: str | None
    perturb: float
    perturb_mode: str
    student_momentum: float
    continuous_start: bool
    eval_every: int
    eval_epochs: int
    eval_test_size: int
    log_every: int
    cpus_per_worker: float
    gpus_per_worker: float
    checkpoint_every: int
    max_failures: int
    guard_max_lr: float
    guard_patience: int
    dsa: bool
    dsa_strategy: str | None
    temperature: float

    @classmethod
    def from_config(cls, d: dict[str, Any]) -> DistillSpec:
        return _build(cls, d, "distill")

    @property
    def resources(self) -> Resources:
        return Resources(self.cpus_per_worker, self.gpus_per_worker)

    @property
    def jemalloc(self) -> bool:
        """Whether the workers start on Ray's jemalloc (``raydd.runtime.jemalloc_env``): ``auto`` too."""
        return self.heap in ("auto", "jemalloc")

    @property
    def reuse_heap(self) -> bool:
        """Whether a worker keeps large freed blocks on glibc's heap (``raydd.runtime.reuse_heap``): ``auto``
        for the constant-memory unroll where Ray has no jemalloc (its one graph at a time leaves the heap
        little to fragment); a no-op on jemalloc."""
        return self.heap == "reuse" or (self.heap == "auto" and self.unroll == "constant_memory")


@dataclass(frozen=True)
class QuantizeSpec:
    """The ``quantize`` group (DDOQ, D4M): encoder, prototypes and k-means settings."""

    encoder: str
    prototype: str
    latent_dim: int
    max_iters: int
    tol: float
    batch_size: int | None
    vae_path: str | None
    restarts: int
    classes_per_task: int
    cpus_per_task: float
    gpus_per_task: float
    fit_samples: int
    ae_epochs: int

    @classmethod
    def from_config(cls, q: dict[str, Any]) -> QuantizeSpec:
        return _build(cls, q, "quantize")

    @property
    def resources(self) -> Resources:
        return Resources(self.cpus_per_task, self.gpus_per_task)


@dataclass(frozen=True)
class EvaluateSpec:
    """The ``evaluate`` group: which set (only read), which architectures, how they train."""

    set: str | None
    models: tuple[str, ...]
    width: int | None
    num_models: int
    epochs: int
    lr: float
    use_set_lr: bool
    batch_size: int
    dsa: bool
    dsa_strategy: str | None
    cpus_per_model: float
    gpus_per_model: float
    amp: bool
    compile: tuple[str, ...]

    @classmethod
    def from_config(cls, ev: dict[str, Any]) -> EvaluateSpec:
        if not isinstance(ev["compile"], (list, tuple)):
            raise ConfigError(f"evaluate.compile must be a list of architectures (e.g. [resnet18,vgg11]), got {ev['compile']!r}")
        return dataclasses.replace(_build(cls, ev, "evaluate"), models=tuple(ev["models"]), compile=tuple(ev["compile"]))

    @property
    def resources(self) -> Resources:
        return Resources(self.cpus_per_model, self.gpus_per_model)


@dataclass(frozen=True)
class DataSpec:
    """The ``data`` group (``raydd data``): where the Parquet shards go."""

    out: str | None
    rows_per_shard: int
    shuffle_seed: int | None

    @classmethod
    def from_config(cls, d: dict[str, Any]) -> DataSpec:
        return _build(cls, d, "data")


@dataclass(frozen=True)
class LoaderSpec:
    """The ``loader`` group: how stages read a split of real images (in memory, or streamed by Ray Data)."""

    mode: str
    memory_limit_gb: float
    shuffle_shards: int
    prefetch_blocks: int

    @classmethod
    def from_config(cls, d: dict[str, Any]) -> LoaderSpec:
        return _build(cls, d, "loader")


@dataclass(frozen=True)
class TuneSpec:
    """The ``tune`` group: the sweep's space, scheduler and limits."""

    name: str | None
    space: dict[str, Any] | None
    num_samples: int
    metric: str
    mode: str
    scheduler: str
    grace_period: int | None
    reduction_factor: int
    compare_within: tuple[str, ...]
    max_concurrent: int | None
    resume: bool
    export_experiment: str | None

    @classmethod
    def from_config(cls, t: dict[str, Any]) -> TuneSpec:
        return dataclasses.replace(_build(cls, t, "tune"), compare_within=tuple(t["compare_within"]))


@dataclass(frozen=True)
class StorageSpec:
    """The ``storage`` group: the root every stage writes under (a path or ``s3://bucket/prefix``)."""

    root: str
    endpoint_url: str | None = None

    @classmethod
    def from_config(cls, s: dict[str, Any]) -> StorageSpec:
        return _build(cls, s, "storage", optional=("endpoint_url",))


@dataclass(frozen=True)
class MethodSpec:
    name: str
    stage: str

    @classmethod
    def from_config(cls, m: dict[str, Any]) -> MethodSpec:
        return _build(cls, m, "method")


@dataclass(frozen=True)
class RunSpec:
    """The whole composed config, typed: one spec per group plus the top-level keys."""

    ipc: int
    seed: int
    workers: int
    run_name: str | None
    ray_address: str | None
    zca: bool
    channels_last: bool | str   # True, False or "auto" (raydd.core.train.channels_last)
    tracking: str | None
    method: MethodSpec
    dataset: DatasetCfg
    model: ModelSpec
    experts: ExpertsSpec
    distill: DistillSpec
    quantize: QuantizeSpec
    evaluate: EvaluateSpec
    data: DataSpec
    loader: LoaderSpec
    tune: TuneSpec
    storage: StorageSpec

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> RunSpec:
        groups = {"method": MethodSpec, "dataset": DatasetCfg, "model": ModelSpec, "experts": ExpertsSpec,
                  "distill": DistillSpec, "quantize": QuantizeSpec, "evaluate": EvaluateSpec, "data": DataSpec,
                  "loader": LoaderSpec, "tune": TuneSpec, "storage": StorageSpec}
        top = {k: cfg.get(k) for k in ("ipc", "seed", "workers", "run_name", "ray_address", "zca", "channels_last", "tracking")}
        return cls(**top, **{k: g.from_config(cfg[k]) for k, g in groups.items()})


def _positive_int(value: Any, key: str, allow_zero: bool = False) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if allow_zero else 1):
        raise ConfigError(f"{key} must be {'an integer >= 0' if allow_zero else 'a positive integer'}, got {value!r}")


def _choice(value: Any, key: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"unknown {key} {value!r}; choose {' or '.join(options) if len(options) == 2 else 'one of ' + ', '.join(options)}")


def _dsa_strategy(value: str | None, key: str) -> None:
    """null (the reference's strategy), or transform groups the DSA module knows, joined by ``_``."""
    if value is not None:
        from raydd.core.dsa import parse_strategy  # torch: only when a strategy is set

        try:
            parse_strategy(value)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None


# The least value of each integer key a dataset group may set (resized datasets' image_size; the generated dataset's
# counts and seed); a key the group leaves out is None and unchecked.
DATASET_MINIMA = {"image_size": 8, "num_classes": 2, "images_per_class": 1, "test_per_class": 1, "seed": 0}


def check_dataset(d: DatasetCfg) -> None:
    for key, low in DATASET_MINIMA.items():
        value = getattr(d, key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            raise ConfigError(f"dataset.{key} must be an integer >= {low}, got {value!r}")


def check_experts(e: ExpertsSpec) -> None:
    _choice(e.variant, "experts.variant", EXPERT_VARIANTS)
    _choice(e.form, "experts.form", EXPERT_FORMS)
    _choice(e.dtype, "experts.dtype", EXPERT_DTYPES)
    _choice(e.clip_mode, "experts.clip_mode", CLIP_MODES)
    _choice(e.gradient_penalty_on, "experts.gradient_penalty_on", PENALTY_TARGETS)
    for key in ("num", "epochs", "batch_size"):
        if getattr(e, key) <= 0:
            raise ConfigError(f"experts.{key} must be positive, got {getattr(e, key)}")
    if e.lr <= 0 or e.lr_decay <= 0:
        raise ConfigError(f"experts.lr and experts.lr_decay must be positive, got {e.lr} and {e.lr_decay}")
    if e.lr_decay_epoch is not None and not 1 <= e.lr_decay_epoch < e.epochs:
        raise ConfigError(f"experts.lr_decay_epoch must be in [1, {e.epochs - 1}] for {e.epochs} epochs (or null), "
                          f"got {e.lr_decay_epoch}")
    if e.clip_epochs < 0 or e.gradient_penalty < 0:
        raise ConfigError(f"experts.clip_epochs and experts.gradient_penalty must be >= 0, "
                          f"got {e.clip_epochs} and {e.gradient_penalty}")
    if not 0 <= e.gsam_rho_min <= e.gsam_rho_max or e.gsam_alpha < 0:
        raise ConfigError(f"experts.gsam_rho_min must lie in [0, gsam_rho_max] and experts.gsam_alpha be >= 0, got "
                          f"rho_min {e.gsam_rho_min}, rho_max {e.gsam_rho_max}, alpha {e.gsam_alpha}")
    if e.variant == "ftd" and e.lr_decay == 1 and e.gsam_rho_min != e.gsam_rho_max:
        raise ConfigError(f"experts.gsam_rho_min {e.gsam_rho_min} must equal gsam_rho_max {e.gsam_rho_max} at a "
                          "constant lr (experts.lr_decay=1): ρ follows the lr")
    if e.form == "convex" and not 0 <= e.convex_points <= e.epochs - 1:
        raise ConfigError(f"experts.convex_points must be in [0, {e.epochs - 1}] for {e.epochs} epochs, got {e.convex_points}")
    if e.form == "waypoints" and not 2 <= e.waypoints <= e.epochs + 1:
        raise ConfigError(f"experts.waypoints must be in [2, {e.epochs + 1}] for {e.epochs} epochs, got {e.waypoints}")
    if e.cpus_per_expert <= 0 or e.gpus_per_expert < 0 or e.max_retries < 0:
        raise ConfigError("experts.cpus_per_expert must be > 0, gpus_per_expert and max_retries >= 0")


def last_start(d: DistillSpec) -> float:
    """The latest start epoch (its supremum for float starts): the window's upper end is exclusive."""
    return d.max_start_epoch - (0 if d.continuous_start else 1)


def check_distill(d: DistillSpec, expert_epochs: int, window: bool) -> None:
    """``window``: the start window must fit the experts' epochs (stages that read a store)."""
    _choice(d.unroll, "distill.unroll", UNROLLS)
    _choice(d.heap, "distill.heap", HEAPS)
    _positive_int(d.kept_graphs, "distill.kept_graphs", allow_zero=True)
    if d.kept_graphs and d.unroll != "constant_memory":
        raise ConfigError(f"distill.kept_graphs={d.kept_graphs} applies to distill.unroll=constant_memory "
                          f"(plain keeps every step's graph); set it to 0 or choose constant_memory")
    _choice(d.init, "distill.init", INITS)
    _choice(d.soft_label_init, "distill.soft_label_init", SOFT_LABEL_INITS)
    _choice(d.perturb_mode, "distill.perturb_mode", PERTURB_MODES)
    _choice(d.lr_param, "distill.lr_param", LR_PARAMS)
    _dsa_strategy(d.dsa_strategy, "distill.dsa_strategy")
    if d.balanced_inner_loss is not None:
        _choice(d.balanced_inner_loss, "distill.balanced_inner_loss", BALANCES)
    if d.intermediate_points is not None:
        _positive_int(d.intermediate_points, "distill.intermediate_points", allow_zero=True)
    if not 0 < d.lr_backoff <= 1 or not 0 <= d.max_rejected_fraction <= 1 or d.temperature <= 0:
        raise ConfigError("distill.lr_backoff must lie in (0, 1], distill.max_rejected_fraction in [0, 1] and "
                          "distill.temperature must be positive")
    if min(d.lr_img, d.lr_lr, d.lr_label) < 0 or not d.lr_init > 0:
        raise ConfigError(f"distill.lr_img, lr_lr and lr_label must be >= 0 and distill.lr_init > 0, got lr_img={d.lr_img}, "
                          f"lr_lr={d.lr_lr}, lr_label={d.lr_label}, lr_init={d.lr_init}")
    if d.lr_max_step is not None and not d.lr_max_step > 1:
        raise ConfigError(f"distill.lr_max_step must be > 1 (the most the learned lr may change by in one iteration) "
                          f"or null (unbounded), got {d.lr_max_step}")
    if d.threshold_patience is not None:
        _positive_int(d.threshold_patience, "distill.threshold_patience")
    if d.perturb < 0:
        raise ConfigError(f"distill.perturb must be >= 0 (0: no weight perturbation), got {d.perturb}")
    _choice(d.window, "distill.window", WINDOWS)
    if window and d.window == "difficulty" and d.expert_epochs >= expert_epochs:
        raise ConfigError(f"distill.expert_epochs={d.expert_epochs} leaves no start epoch in experts.epochs={expert_epochs}")
    if window and d.window == "fixed" and (d.min_start_epoch >= d.max_start_epoch or last_start(d) + d.expert_epochs > expert_epochs):
        raise ConfigError(f"distill start window [{d.min_start_epoch}, {d.max_start_epoch}) + expert_epochs "
                          f"{d.expert_epochs} must lie within experts.epochs={expert_epochs} and be non-empty")
    init = d.max_start_epoch_init
    if d.window == "fixed" and init is not None and not d.min_start_epoch < init <= d.max_start_epoch:
        raise ConfigError(f"distill.max_start_epoch_init={init} must lie in (min_start_epoch, max_start_epoch] "
                          f"= ({d.min_start_epoch}, {d.max_start_epoch}]")
    if d.iterations <= 0 or d.syn_steps <= 0 or d.expert_epochs <= 0:
        raise ConfigError("distill.iterations, distill.syn_steps and distill.expert_epochs must be positive")
    if d.batch_syn is not None:
        _positive_int(d.batch_syn, "distill.batch_syn")
    if d.lr_init <= 0 or d.cpus_per_worker <= 0 or d.gpus_per_worker < 0:
        raise ConfigError("distill.lr_init and distill.cpus_per_worker must be positive, distill.gpus_per_worker >= 0")
    for key in ("checkpoint_every", "log_every", "guard_patience"):
        _positive_int(getattr(d, key), f"distill.{key}")
    _positive_int(d.eval_every, "distill.eval_every", allow_zero=True)


def check_quantize(q: QuantizeSpec) -> None:
    _choice(q.encoder, "quantize.encoder", ENCODERS)
    _choice(q.prototype, "quantize.prototype", PROTOTYPES)
    for key in ("latent_dim", "max_iters", "restarts", "classes_per_task", "fit_samples", "ae_epochs"):
        _positive_int(getattr(q, key), f"quantize.{key}")
    if q.batch_size is not None and (not isinstance(q.batch_size, int) or q.batch_size <= 0):
        raise ConfigError(f"quantize.batch_size must be null or a positive integer, got {q.batch_size!r}")
    if q.tol < 0 or q.cpus_per_task <= 0 or q.gpus_per_task < 0:
        raise ConfigError("quantize.tol must be >= 0, quantize.cpus_per_task > 0 and quantize.gpus_per_task >= 0")


def check_quantize_data(q: QuantizeSpec, channels: int, image_size: int, dataset: str) -> None:
    """What the encoder needs of the dataset's images (known once the dataset is found)."""
    dim = channels * image_size ** 2
    if q.encoder == "pca" and q.latent_dim > dim:
        raise ConfigError(f"quantize.latent_dim={q.latent_dim} exceeds the image dimension {dim} of {dataset}")
    if q.encoder == "autoencoder" and image_size % 4:
        raise ConfigError(f"quantize.encoder=autoencoder needs an image size divisible by 4, got {image_size}")


def check_evaluate(ev: EvaluateSpec) -> None:
    _dsa_strategy(ev.dsa_strategy, "evaluate.dsa_strategy")
    if ev.width is not None:
        _positive_int(ev.width, "evaluate.width")
    if ev.num_models <= 0 or ev.epochs <= 0:
        raise ConfigError("evaluate.num_models and evaluate.epochs must be positive")
    if ev.lr <= 0 or ev.batch_size <= 0:
        raise ConfigError("evaluate.lr and evaluate.batch_size must be positive")


def tune_report_period(t: TuneSpec, d: DistillSpec) -> int:
    """How often the ASHA metric is reported: the fast evaluation's period, or the logged metrics'."""
    return d.eval_every if t.metric == "eval_acc" else d.log_every


def tune_grace_period(t: TuneSpec, d: DistillSpec) -> int:
    return t.grace_period or tune_report_period(t, d)


def tune_name(spec: RunSpec) -> str:
    return spec.tune.name or f"{spec.method.name}-{spec.dataset.name}-{spec.model.tag}"


def check_tune(spec: RunSpec, cfg: dict[str, Any]) -> None:
    """Sweep settings that would fail inside Tune; ASHA's rungs must fall on reports before a trial's last."""
    t, d = spec.tune, spec.distill
    if not re.fullmatch(r"[A-Za-z0-9_.=-]+", tune_name(spec)):
        raise ConfigError(f"tune.name {tune_name(spec)!r}: use letters, digits and _ . = - only")
    if spec.workers < 1:
        raise ConfigError("raydd tune runs each trial's distillation on Ray Train workers: set workers >= 1")
    if t.mode not in ("max", "min"):
        raise ConfigError(f"tune.mode must be max or min, got {t.mode!r}")
    _positive_int(t.num_samples, "tune.num_samples")
    if t.max_concurrent is not None and (not isinstance(t.max_concurrent, int) or t.max_concurrent < 1):
        raise ConfigError(f"tune.max_concurrent must be a positive integer or null, got {t.max_concurrent!r}")
    _choice(t.scheduler, "tune.scheduler", SCHEDULERS)
    if t.scheduler != "asha":
        return
    for key in t.compare_within:
        node: Any = cfg
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"tune.compare_within: {key!r} is not a config key")
            node = node[part]
    period, grace = tune_report_period(t, d), tune_grace_period(t, d)
    if period <= 0:
        raise ConfigError("ASHA ranks trials by the periodic fast evaluation: set distill.eval_every > 0")
    if not isinstance(t.reduction_factor, int) or t.reduction_factor < 2:
        raise ConfigError(f"tune.reduction_factor must be an integer >= 2, got {t.reduction_factor!r}")
    if grace % period or not 0 < grace < d.iterations:
        raise ConfigError(f"tune.grace_period={grace} must be a multiple of the {t.metric} period ({period}) "
                          f"and below distill.iterations={d.iterations}")


LOADER_MODES = ("auto", "memory", "stream")


def check_loader(lo: LoaderSpec) -> None:
    _choice(lo.mode, "loader.mode", LOADER_MODES)
    if not isinstance(lo.memory_limit_gb, (int, float)) or isinstance(lo.memory_limit_gb, bool) or lo.memory_limit_gb < 0:
        raise ConfigError(f"loader.memory_limit_gb must be a number >= 0, got {lo.memory_limit_gb!r}")
    _positive_int(lo.shuffle_shards, "loader.shuffle_shards")
    _positive_int(lo.prefetch_blocks, "loader.prefetch_blocks")


def check(spec: RunSpec, stage: str, models: tuple[str, ...], datasets: list[str]) -> None:
    """Every check that needs no data: names, ranges, and what the stage's method needs."""
    if spec.dataset.name not in datasets:
        raise ConfigError(f"unknown dataset {spec.dataset.name!r}; choose one of {', '.join(datasets)}")
    for name in [spec.model.name, *spec.evaluate.models]:
        if name not in models:
            raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(models)}")
    for name in spec.evaluate.compile:
        if name not in models:
            raise ConfigError(f"evaluate.compile: unknown model {name!r}; choose one of {', '.join(models)}")
    widths = [(spec.model.name, spec.model.width, "model.width")]
    widths += [(name, spec.evaluate.width, "evaluate.width") for name in spec.evaluate.models if name != spec.model.name]
    for name, width, key in widths:
        if width is not None and name not in WIDENED:
            raise ConfigError(f"{key}={width} for {name}, which has one width; widths are for {', '.join(WIDENED)}")
    allowed = {"distill": DISTILL_METHODS, "quantize": QUANTIZE_METHODS,
               "evaluate": DISTILL_METHODS + QUANTIZE_METHODS + BASELINES,
               "pipeline": DISTILL_METHODS + QUANTIZE_METHODS, "tune": DISTILL_METHODS}.get(stage)
    if allowed and spec.method.name not in allowed:
        raise ConfigError(f"method {spec.method.name!r} does not run in stage {stage!r}; choose one of {', '.join(allowed)}")
    _positive_int(spec.ipc, "ipc")
    _positive_int(spec.workers, "workers", allow_zero=True)
    check_dataset(spec.dataset)
    if spec.channels_last not in (True, False, "auto"):
        raise ConfigError(f"channels_last must be auto, true or false, got {spec.channels_last!r}")
    if spec.tracking not in (None, "tensorboard"):
        raise ConfigError(f"unknown tracking {spec.tracking!r}; choose null (off) or tensorboard")
    check_experts(spec.experts)
    check_distill(spec.distill, spec.experts.epochs, window=stage in ("distill", "pipeline", "tune"))
    check_quantize(spec.quantize)
    check_evaluate(spec.evaluate)
    check_loader(spec.loader)
    if stage == "data":
        if not spec.data.out:
            raise ConfigError("raydd data needs data.out (a local path or s3://bucket/prefix for the Parquet shards)")
        if spec.dataset.name == "parquet" or spec.dataset.uri:
            raise ConfigError("raydd data converts a dataset from dataset.root; dataset=parquet / dataset.uri is Parquet already")
        _positive_int(spec.data.rows_per_shard, "data.rows_per_shard")
        if spec.data.shuffle_seed is not None:
            _positive_int(spec.data.shuffle_seed, "data.shuffle_seed", allow_zero=True)
