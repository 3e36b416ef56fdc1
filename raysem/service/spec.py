"""Study specs: a YAML file, validated on load, that says what a study runs, where, and where it logs."""

from __future__ import annotations

import itertools
import math
import warnings
from pathlib import Path
from typing import Any, Literal, Optional, TypeVar, get_args, overload

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from raysem.errors import SpecError
from raysem.models.catalog import DEFAULT_MODEL
from raysem.models.device import Precision
from raysem.models.prompts import DEFAULT_PROMPT_STYLE, AnswerBudget, Prompting, PromptStyle
from raysem.semantics.filter import Sigma
from raysem.training.config import METHODS, TrialConfig, check_packable

STUDY_KINDS = (
    "distance_table",
    "accuracy_vs_distance",
    "single_fact_deviation",
    "multi_fact_analysis",
    "filter_vs_random",
    "reweight",
    "quantities",
    "full_finetune",
    "sweep",
    "quick",
)
FILTER_FIELDS = ("filter_mode", "filter_lambda", "filter_sigma", "replace", "mean_min", "mean_max")
SAMPLING_FIELDS = ("k",)


class GammaNoOpWarning(UserWarning):
    """A spec sweeps γ where it cannot act (single facts under AdamW)."""


TrialSettings: type[BaseModel] = create_model(
    "TrialSettings",
    __config__=ConfigDict(extra="forbid"),
    __doc__="TrialConfig fields shared by all trials; an unset field takes TrialConfig's default (lr: the method's).",
    **{
        name: (Optional[f.annotation], Field(None, description=f.description))  # noqa: UP045  # a runtime annotation
        for name, f in TrialConfig.model_fields.items()
    },  # type: ignore[call-overload]  # fields built from TrialConfig's
)


class Dimension(BaseModel):
    """One swept knob: a grid, a choice, or a distribution (for random / Optuna search)."""

    model_config = ConfigDict(extra="forbid")

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Dimension:
        kinds = [k for k in ("grid", "choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of grid/choice/uniform/loguniform/randint, got {kinds or 'none'}")
        values = getattr(self, kinds[0])
        if kinds[0] in ("grid", "choice") and not values:
            raise ValueError(f"{kinds[0]} needs at least one value")
        if kinds[0] in ("uniform", "loguniform", "randint") and not values[0] < values[1]:
            raise ValueError(f"{kinds[0]} bounds must be (low, high) with low < high, got {list(values)}")
        if kinds[0] == "loguniform" and values[0] <= 0:
            raise ValueError(f"loguniform bounds must be > 0, got {list(values)}")
        return self

    def values(self) -> list[Any]:
        """Every value a grid or choice can take (distributions give their bounds)."""
        return list(self.grid or self.choice or self.uniform or self.loguniform or self.randint or [])


class Sampling(BaseModel):
    """How fact sets are drawn: ``k`` facts per trial, ``n_samplings`` draws, one seed."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(1, ge=1)
    n_samplings: int = Field(10, ge=1)
    per_k: dict[int, int] = Field(default_factory=dict, description="n_samplings for particular set sizes")
    seed: int = 0

    def n_for(self, k: int) -> int:
        """How many samplings are drawn for sets of ``k`` facts."""
        return self.per_k.get(k, self.n_samplings)


class Filter(BaseModel):
    """The semantic-distance data filter (Eq. 4) or its random-replacement baseline."""

    model_config = ConfigDict(extra="forbid")

    filter_mode: Literal["none", "filter", "random"] = "none"
    filter_lambda: float = Field(0.0, ge=0)
    filter_sigma: Sigma = Field(
        "variance", description="Eq. 4's σ: the set's variance (the paper's σ², default) or its standard deviation"
    )
    replace: float = Field(0.0, ge=0, le=1)
    mean_min: float | None = None
    mean_max: float | None = None

    def identity(self) -> dict[str, Any]:
        """Its part of a study's identity: ``filter_sigma`` only when set away from the variance it was
        before the option existed, so that earlier studies keep their fingerprints."""
        dump = self.model_dump(mode="json")
        if dump["filter_sigma"] == "variance":
            del dump["filter_sigma"]
        return dump

    @model_validator(mode="after")
    def _bounds(self) -> Filter:
        if self.mean_min is not None and self.mean_max is not None and self.mean_min >= self.mean_max:
            raise ValueError(f"mean_min ({self.mean_min}) must be below mean_max ({self.mean_max})")
        return self


class Confirm(BaseModel):
    """Samplings the search never sees, on which the best point and the baseline are run, paired."""

    model_config = ConfigDict(extra="forbid")

    n_samplings: int = Field(10, ge=2)
    seed: int = Field(description="draws the confirmation samplings; must differ from sampling.seed")


class Search(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["grid", "random", "optuna"] = "grid"
    num_samples: int = Field(1, ge=1, description="draws per grid point (random/optuna: trials)")
    metric: str | None = Field(
        None,
        description="the trial metric the search optimises; default trained_accuracy when the study filters "
        "(accuracy on the facts actually trained, which the replaced facts do not cap), else accuracy",
    )
    mode: Literal["max", "min"] = "max"
    confirm: Confirm | None = Field(
        None, description="random/optuna: run the best point and the baseline on fresh samplings"
    )


class Resources(BaseModel):
    """What one Tune trial asks for; ``custom`` holds resources such as ``A100``."""

    model_config = ConfigDict(extra="forbid")

    cpu: float = Field(1.0, ge=0)
    gpu: float = Field(0.0, ge=0, description="GPUs per unit (a fraction shares one GPU between units)")
    gpu_memory_gb: float | None = Field(
        None, gt=0, description="memory of one GPU the units land on; `raysem study plan` checks a unit fits its share"
    )
    custom: dict[str, float] = Field(default_factory=dict)
    full_ft_worker: dict[str, float] = Field(
        default_factory=dict, description="resources per DeepSpeed worker, e.g. {A100: 1, GPU: 1}"
    )
    expect_autoscaling: bool = Field(False, description="allow resources no current node has (an autoscaler adds them)")

    def bundle(self) -> dict[str, float]:
        out = {"CPU": self.cpu, **self.custom}
        if self.gpu:
            out["GPU"] = self.gpu
        return out


class Failure(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_failures: int = Field(1, ge=-1, description="retries of a crashed Tune trial (-1: forever)")
    fail_fast: bool = False


class Tracking(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uri: str = "sqlite:///mlflow.db"
    experiment: str | None = None


class StudySpec(BaseModel):
    """A whole study: data, sampling, trial defaults, sweep, search, resources, tracking and storage."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    kind: Literal[STUDY_KINDS] = "quick"  # type: ignore[valid-type]
    model: str = DEFAULT_MODEL
    prompt_style: PromptStyle = Field(
        DEFAULT_PROMPT_STYLE, description="chat, fewshot or zeroshot, for training and every answer"
    )
    answer_budget: AnswerBudget = Field("target", description="target: the reference's token count; free: free_tokens")
    free_tokens: int = Field(24, ge=1, description="answer budget under answer_budget: free (cut at the first newline)")
    dataset: str = "worldfacts"
    data_limit: int | None = Field(None, ge=1, description="use only the first N facts of the dataset")
    sampling: Sampling = Sampling()
    trial: TrialSettings = Field(default_factory=TrialSettings, description="TrialConfig fields shared by all trials")
    filter: Filter = Filter()
    sweep: dict[str, Dimension] = Field(default_factory=dict)
    exclude: list[dict[str, Any]] = Field(
        default_factory=list,
        description="grid points left out: those matching every setting of an entry, e.g. {k: 1, gamma: 1.0}",
    )
    search: Search = Search()
    resources: Resources = Resources()
    max_concurrent: int = Field(1, ge=1)
    pack_size: int = Field(8, ge=1, description="single-fact LoRA trials trained together in one pack")
    precision: Precision = Field(
        "auto",
        description="the resident model's dtype: auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or "
        "float16; trainable weights and optimizer state stay float32",
    )
    analyses: bool = False
    failure: Failure = Failure()
    tracking: Tracking = Tracking()
    storage_path: str = "raysem-out/ray"
    storage_shared: bool | None = Field(
        None, description="whether every node reaches storage_path; None: judged from its filesystem type (NFS, EFS, …)"
    )
    report: bool = True
    quick: dict[str, Any] = Field(default_factory=dict, description="overrides applied with --quick")

    @field_validator("sweep")
    @classmethod
    def _known_dimensions(cls, sweep: dict[str, Dimension]) -> dict[str, Dimension]:
        known = set(TrialConfig.model_fields) | set(FILTER_FIELDS) | set(SAMPLING_FIELDS)
        for name, dim in sweep.items():
            if name not in known:
                raise ValueError(f"unknown sweep dimension {name!r}; sweepable: {sorted(known)}")
            for value in dim.values():
                _check_value(name, value)
        return sweep

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        try:
            self.trial_config()
        except ValidationError as exc:
            raise ValueError(f"trial.{_first_error(exc)}") from None
        if self.search.algorithm == "grid":
            bad = [n for n, d in self.sweep.items() if d.grid is None and d.choice is None]
            if bad:
                raise ValueError(f"grid search needs grid/choice dimensions; {bad} are distributions")
        if self.search.algorithm == "optuna" and any(d.grid is not None for d in self.sweep.values()):
            raise ValueError("optuna search takes choice/uniform/loguniform/randint dimensions, not grid")
        if self.search.confirm is not None:
            if self.search.algorithm == "grid":
                raise ValueError("search.confirm follows a random or optuna search; a grid already runs every point")
            if self.search.confirm.seed == self.sampling.seed:
                raise ValueError(
                    f"search.confirm.seed must differ from sampling.seed ({self.sampling.seed}): "
                    "confirmation samplings are the ones the search never saw"
                )
        for entry in self.exclude:
            if self.search.algorithm != "grid" or not entry or set(entry) - set(self.sweep):
                raise ValueError(f"exclude: {entry} must name swept dimensions of a grid search ({sorted(self.sweep)})")
        if self._gamma_on_lone_adamw_facts():
            warnings.warn(
                f"{self.name}: γ > 0 on single-fact (k = 1) AdamW trials changes nothing: AdamW cancels a constant "
                "factor on a lone fact's loss. Compare γ on multi-fact sets, or set trial.optimizer: sgd.",
                GammaNoOpWarning,
                stacklevel=2,
            )
        if 1 in self.ks() and self.filters():
            raise ValueError(
                "filter settings with k = 1: the data filter replaces members of a multi-fact training set, and "
                "replacing a single fact would train on another fact than the one tested; use k > 1 or drop "
                "filter / sweep.filter_mode"
            )
        self._check_points()
        return self

    def _check_points(self) -> None:
        """Every grid point (and every search bound and choice) builds a valid TrialConfig, and packs it if it packs."""
        for point in self.grid_points():
            try:
                cfg = self.point_config(point)
            except ValidationError as exc:
                err = exc.errors()[0]
                name = ".".join(str(p) for p in err["loc"])
                where = f"sweep.{name}" if name in self.sweep else f"trial.{name}"
                raise ValueError(f"{where}: {err['msg']} (got {err.get('input')!r}) at the point {point}") from None
            if self.packs(point):
                try:
                    check_packable([cfg])
                except ValueError as exc:
                    raise ValueError(
                        f"pack_size: {self.pack_size} packs single-fact LoRA trials, and {exc} at the point {point}; "
                        "set pack_size: 1 to run them unpacked"
                    ) from None

    def point_config(self, point: dict[str, Any], seed: int | None = None) -> TrialConfig:
        """The TrialConfig of one sweep point (filter and set-size dimensions are not trial settings)."""
        fields = {n: v for n, v in point.items() if n not in FILTER_FIELDS and n not in SAMPLING_FIELDS}
        return self.trial_config(**fields, **({} if seed is None else {"seed": seed}))

    def packs(self, point: dict[str, Any]) -> bool:
        """Whether samplings at this point train as packs of single-fact LoRA trials."""
        k = int(point.get("k", self.sampling.k))
        return k == 1 and point.get("method", self.trial.method or "lora") == "lora" and self.pack_size > 1  # type: ignore[attr-defined]

    def grid_points(self) -> list[dict[str, Any]]:
        """Every point of a grid sweep (one empty point when nothing is swept), less the ``exclude``d ones."""
        names = sorted(self.sweep)
        points = [dict(zip(names, combo)) for combo in itertools.product(*(self.sweep[n].values() for n in names))]
        return [p for p in points if not any(all(p.get(k) == v for k, v in e.items()) for e in self.exclude)]

    def _gamma_on_lone_adamw_facts(self) -> bool:
        """Whether some trial applies γ > 0 to a single fact under AdamW (where γ cannot act)."""
        for point in self.grid_points():  # distributions contribute their bounds
            merged = {**self.trial.model_dump(exclude_none=True), "k": self.sampling.k, **point}
            if merged["k"] == 1 and merged.get("optimizer", "adamw") == "adamw" and merged.get("gamma", 0.0) > 0:
                return True
        return False

    def filters(self) -> bool:
        """Whether any trial of the study filters or randomly replaces its training set."""
        modes = {self.filter.filter_mode, *(self.sweep["filter_mode"].values() if "filter_mode" in self.sweep else [])}
        return modes != {"none"}

    @property
    def objective(self) -> str:
        """The metric a search optimises (see ``Search.metric``)."""
        return self.search.metric or ("trained_accuracy" if self.filters() else "accuracy")

    @property
    def prompting(self) -> Prompting:
        return Prompting(self.prompt_style, self.answer_budget, self.free_tokens)

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    def trial_config(self, **overrides: Any) -> TrialConfig:
        """The TrialConfig for one point of the sweep."""
        fields = {
            k: v
            for k, v in {**self.trial.model_dump(exclude_none=True), **overrides}.items()
            if k in TrialConfig.model_fields
        }
        return TrialConfig(**fields)

    def ks(self) -> list[int]:
        """Every set size the study uses."""
        return [int(v) for v in self.sweep["k"].values()] if "k" in self.sweep else [self.sampling.k]


def _check_value(name: str, value: Any) -> None:
    if name in ("gamma", "filter_lambda") and (
        not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
    ):
        raise ValueError(f"sweep.{name}: values must be finite numbers >= 0, got {value!r}")
    if name == "replace" and not (isinstance(value, (int, float)) and 0 <= value <= 1):
        raise ValueError(f"sweep.replace: ρ must lie in [0, 1], got {value!r}")
    if name == "method" and value not in METHODS:
        raise ValueError(f"sweep.method: unknown method {value!r}; methods: {list(METHODS)}")
    if name == "filter_sigma" and value not in get_args(Sigma):
        raise ValueError(f"sweep.filter_sigma: {value!r} is not one of variance/std")
    if name == "filter_mode" and value not in ("none", "filter", "random"):
        raise ValueError(f"sweep.filter_mode: {value!r} is not one of none/filter/random")
    if name == "k" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"sweep.k: set sizes must be integers >= 1, got {value!r}")
    if name in ("mean_min", "mean_max") and not (isinstance(value, (int, float)) and math.isfinite(value)):
        raise ValueError(f"sweep.{name}: values must be finite numbers, got {value!r}")


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    err["msg"] = err["msg"].removeprefix("Value error, ")
    where = ".".join(str(p) for p in err["loc"])
    value = err.get("input")
    got = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{where}: {err['msg']}{got}" if where else f"{err['msg']}{got}"


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_spec_file(path: Path) -> dict[str, Any]:
    """A spec file's mapping of fields; SpecError when it is missing, not YAML or not a mapping."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec is a mapping of fields, got {type(raw).__name__}")
    return raw


SpecT = TypeVar("SpecT", bound=BaseModel)


@overload
def load_spec(path: str | Path, quick: bool = False, overrides: dict[str, Any] | None = None) -> StudySpec: ...


@overload
def load_spec(
    path: str | Path, quick: bool = False, overrides: dict[str, Any] | None = None, *, kind: type[SpecT]
) -> SpecT: ...


def load_spec(
    path: str | Path, quick: bool = False, overrides: dict[str, Any] | None = None, kind: type[BaseModel] = StudySpec
) -> BaseModel:
    """Read and validate a spec (a ``StudySpec`` unless ``kind`` says otherwise); ``quick`` applies the spec's
    own ``quick:`` overrides, which are validated either way, so that a bad override fails here, not in a run."""
    path = Path(path)
    raw = read_spec_file(path)
    if quick:
        raw = _merge(raw, raw.get("quick") or {})
    if overrides:
        raw = _merge(raw, overrides)
    try:
        spec = kind(**raw)
    except ValidationError as exc:
        raise SpecError(f"{path}: {_first_error(exc)}") from None
    if kind is StudySpec and not quick and raw.get("quick"):
        try:
            kind(**_merge(raw, raw["quick"]))
        except ValidationError as exc:
            raise SpecError(f"{path}: with --quick: {_first_error(exc)}") from None
    return spec


class DistanceTableSpec(BaseModel):
    """What ``jobs/distance_table.py`` computes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(DEFAULT_MODEL, min_length=1, description="embedded model name, local folder or hub id")
    dataset: str = Field(min_length=1, description="dataset name (zsre, counterfact, ...) or file path")
    limit: int | None = Field(None, ge=1, description="use only the first N facts")
    batch_size: int = Field(32, ge=1, le=4096, description="facts per batch (and per decoding batch)")
    actors: int = Field(1, ge=1, le=1024, description="model-holding actors in the Ray Data pool")
    cpu: float = Field(1.0, ge=0, description="CPUs per actor")
    gpu: float = Field(0.0, ge=0, description="GPUs per actor (a fraction shares one); the model goes on it")
    precision: Precision = Field(
        "auto", description="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16"
    )
    prompt_style: PromptStyle = Field(
        DEFAULT_PROMPT_STYLE, description="chat, fewshot or zeroshot (raysem.models.prompts)"
    )
    answer_budget: AnswerBudget = Field("target", description="target (the reference's token count) or free")
    free_tokens: int = Field(24, ge=1, description="answer budget under answer_budget: free")

    @property
    def prompting(self) -> Prompting:
        return Prompting(self.prompt_style, self.answer_budget, self.free_tokens)

    def resources(self) -> dict[str, float]:
        """Each actor's Ray resources."""
        return {"CPU": self.cpu, **({"GPU": self.gpu} if self.gpu else {})}
