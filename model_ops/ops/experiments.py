"""A/B experiments between versions of one model: sticky assignment, a sequential test that may be looked at after
every outcome, a sample-ratio check, and a conclusion written once to the registry's audit log.

Dagster-free and free of any server, so the live inference server and the batch path use the same decisions.

**Design.** An experiment serves two or more versions of one model (its *arms*, the first is the *control*) at
fixed weights. A key (user, flight, request key) always lands in the same arm: its bucket is
:func:`model_ops.ops.routing.buckets` of the key salted with the experiment, and the arms own consecutive intervals
of cumulative weight (:func:`model_ops.ops.routing.assign_weighted`). Outcomes (a binary one such as "delayed" or a
conversion, or a continuous one) arrive later, are folded into per-arm sufficient statistics (n, sum, sum of
squares), and after every batch of them the test *looks*.

**The test: mSPRT** (mixture sequential probability ratio test; Johari, Pekelis, Walsh, "Always valid inference",
arXiv 1512.04922), in its normal-mixture form for a difference in means. For a challenger against the control let
``D = mean_challenger - mean_control`` and ``V = s²_c / n_c + s²_t / n_t`` its variance (plug-in sample variances;
for a binary outcome ``s² = p(1-p)·n/(n-1)``, so the same test serves Bernoulli outcomes through their variance).
With a normal mixing distribution ``N(0, τ²)`` over the true difference, the mixture likelihood ratio against "no
difference" is::

    Λ = sqrt(V / (V + τ²)) · exp(τ² D² / (2 V (V + τ²)))

(the two-sample form of the paper, ``D`` being asymptotically a Brownian motion in information time ``1/V``). Under
no difference Λ is a nonnegative martingale with mean 1, so by Ville's inequality ``P(Λ ever ≥ 1/α) ≤ α``: the
always-valid p-value ``p_n = min over looks of min(1, 1/Λ)`` is nonincreasing and may be read after every outcome
without inflating false positives. Inverting the same ratio gives the confidence sequence, an interval valid at
every look at once::

    D ± sqrt(2 V (V + τ²) / τ² · (log(1/α) + ½ log(1 + τ²/V)))

so 0 leaves the interval at exactly the look where ``1/Λ ≤ α``.

*τ* sets where the test is most powerful. By default ``τ² = r·V*``, where ``V*`` is the variance of the difference
the experiment will have at its maximum sample (from the current variance estimates) and ``r`` solves
``r = 2 log(1/α) + log(1 + r)`` (8.22 at α = 0.05): the confidence sequence is then narrowest at the maximum
sample, where the "no difference" verdict is given. Because ``τ²`` and ``V`` share the variance estimate, the test
depends on the data only through the z-statistic ``D / sqrt(V)``: it is scale-free. ``tau=`` (in the metric's
units) overrides it.

**Decisions.** No look counts before every arm has ``min_sample`` outcomes (default 500: the plug-in variance and
the normal approximation need some data; skipping early looks keeps the guarantee, a supremum over fewer looks is
smaller). With more than two arms, each challenger is tested against the control at ``α / (arms - 1)``
(Bonferroni: the chance that *any* comparison ever rejects falsely stays ≤ α). A comparison whose p-value reaches
its α is decided, its direction the sign of ``D`` read against the metric's better direction:

- **winner**: a challenger significantly better than the control (the best such, by its estimate), or the
  control when every challenger is significantly worse;
- **no_difference**: every arm reached ``max_sample`` outcomes and no winner: the test did not reject equality at
  α with that many outcomes per arm. It does not say the arms are equal; differences outside the reported
  confidence sequence are ruled out (at 1 - α), smaller ones are not;
- **srm**: a sample-ratio mismatch (below) blocks every conclusion while it is flagged;
- **running**: otherwise.

A winner or no_difference is final: the state freezes at that look (later outcomes are counted as ``late`` and
change nothing), so the decision recorded is the one reached and recording it again writes nothing.

**Declared in the registry.** :func:`start` writes an ``experiment`` record holding the design and the outcome
rule (``action: start``), :func:`stop` another (``action: stop``); :func:`running` reads the one running from a
model's audit log, and the live server and the batch path route by it (:func:`model_ops.ops.routing.plan`). One
experiment runs per model at a time, and a name is used once per model, so outcomes and conclusions filed under it
belong to one design. Conclusions (:func:`record_decision`) are further ``experiment`` records with a
``conclusion``; start and stop records have none.

**Sample-ratio mismatch.** The outcome counts per arm are tested against the configured weights (chi-square
goodness of fit) and flagged at p < ``srm_alpha`` (0.001, the common convention: GrowthBook, Optimizely, Statsig).
A mismatch means assignment, logging or label arrival differs between the arms, so the comparison cannot be
trusted. It is judged only once every arm expects at least 5 outcomes (the chi-square approximation needs it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from model_ops.errors import NotFoundError, UsageError
from model_ops.ops import routing
from model_ops.vocab import RecordKind

BINARY = "binary"
CONTINUOUS = "continuous"
HIGHER = "higher"
LOWER = "lower"

RUNNING = "running"
WINNER = "winner"
NO_DIFFERENCE = "no_difference"
SRM = "srm"
FINAL = frozenset({WINNER, NO_DIFFERENCE})

BETTER = "better"
WORSE = "worse"

DEFAULT_ALPHA = 0.05
DEFAULT_MIN_SAMPLE = 500
DEFAULT_SRM_ALPHA = 0.001
SRM_MIN_EXPECTED = 5.0
STATE_FORMAT = 1


# ---------------------------------------------------------------------------------------------------- statistics
# Every function here broadcasts over numpy arrays: the experiment calls them on one comparison, the simulation
# tests on ten thousand at once, so what is tested is what decides.


def tuned_ratio(alpha: float) -> float:
    """``r = τ²/V`` at which the normal-mixture confidence sequence at level 1 - α is narrowest: the root of
    ``r = 2 log(1/α) + log(1 + r)`` (the half-width² ``2V(1 + 1/r)(log(1/α) + ½ log(1 + r))`` is minimal there)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be within (0, 1), got {alpha}")
    two_log = 2.0 * math.log(1.0 / alpha)
    r = two_log + 1.0
    for _ in range(200):  # a contraction (derivative 1/(1+r) < 1): converges to machine precision well before
        r = two_log + math.log1p(r)
    return r


def arm_moments(n: Any, total: Any, total_sq: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample variance (n - 1 in the denominator) from the sufficient statistics; NaN below 2 outcomes."""
    n = np.asarray(n, dtype="float64")
    total = np.asarray(total, dtype="float64")
    total_sq = np.asarray(total_sq, dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n > 0, total / n, np.nan)
        var = np.where(n > 1, np.maximum(total_sq - total * total / n, 0.0) / (n - 1.0), np.nan)
    return mean, var


def log_mixture_ratio(diff: Any, var: Any, tau2: Any) -> np.ndarray:
    """log Λ of the normal mixture against "difference 0"; 0 (no evidence) where the variance is unknown or 0."""
    diff, var, tau2 = np.broadcast_arrays(*(np.asarray(a, dtype="float64") for a in (diff, var, tau2)))
    ok = np.isfinite(diff) & np.isfinite(var) & np.isfinite(tau2) & (var > 0) & (tau2 > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = 0.5 * np.log(var / (var + tau2)) + tau2 * diff * diff / (2.0 * var * (var + tau2))
    return np.where(ok, out, 0.0)


def mixture_p(diff: Any, var: Any, tau2: Any) -> np.ndarray:
    """``min(1, 1/Λ)`` at one look; the always-valid p-value is its running minimum over looks."""
    return np.minimum(1.0, np.exp(-log_mixture_ratio(diff, var, tau2)))


def confidence_radius(var: Any, tau2: Any, alpha: float) -> np.ndarray:
    """Half-width of the 1 - α confidence sequence around an estimate of variance ``var`` (inf where unknown)."""
    var, tau2 = np.broadcast_arrays(np.asarray(var, dtype="float64"), np.asarray(tau2, dtype="float64"))
    ok = np.isfinite(var) & np.isfinite(tau2) & (var > 0) & (tau2 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 2.0 * var * (var + tau2) / tau2 * (math.log(1.0 / alpha) + 0.5 * np.log1p(tau2 / var))
    return np.where(ok, np.sqrt(r2), np.inf)


def mixture_tau2(var_c: Any, var_t: Any, planned_c: Any, planned_t: Any, alpha: float, tau: float | None) -> Any:
    """τ² of one comparison: ``tau²`` when given, else tuned so the confidence sequence is narrowest at the planned
    (maximum) sample, from the current variance estimates."""
    if tau is not None:
        return np.float64(tau) ** 2
    var_c = np.asarray(var_c, dtype="float64")
    var_t = np.asarray(var_t, dtype="float64")
    return tuned_ratio(alpha) * (var_c / np.asarray(planned_c, "float64") + var_t / np.asarray(planned_t, "float64"))


@dataclass(frozen=True)
class Look:
    """One look at a challenger against the control (arrays when the inputs are arrays)."""

    difference: Any  # challenger mean - control mean
    variance: Any  # of the difference
    tau2: Any
    p: Any  # min(1, 1/Λ) now: the always-valid p-value is the running minimum of this
    lower: Any  # the 1 - α confidence sequence for the difference, now
    upper: Any


def look(
    control: tuple[Any, Any, Any],
    challenger: tuple[Any, Any, Any],
    *,
    alpha: float,
    planned: tuple[Any, Any],
    min_sample: int,
    tau: float | None = None,
) -> Look:
    """The test at one look, from each arm's (n, sum, sum of squares). No evidence (p = 1) while either arm has fewer
    than ``min_sample`` outcomes. ``alpha`` is this comparison's (already split) level."""
    n_c = np.asarray(control[0], dtype="float64")
    n_t = np.asarray(challenger[0], dtype="float64")
    mean_c, var_c = arm_moments(*control)
    mean_t, var_t = arm_moments(*challenger)
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = var_c / n_c + var_t / n_t
    diff = mean_t - mean_c
    tau2 = mixture_tau2(var_c, var_t, planned[0], planned[1], alpha, tau)
    p = np.where(np.minimum(n_c, n_t) >= min_sample, mixture_p(diff, variance, tau2), 1.0)
    radius = confidence_radius(variance, tau2, alpha)
    return Look(diff, variance, tau2, p, diff - radius, diff + radius)


def srm_p(counts: Sequence[int] | np.ndarray, weights: Sequence[float] | np.ndarray) -> float:
    """Chi-square goodness-of-fit p-value of the counts per arm against the weights; 1.0 while any arm expects fewer
    than 5 (too few to judge)."""
    observed = np.asarray(counts, dtype="float64")
    w = np.asarray(weights, dtype="float64")
    expected = observed.sum() * w / w.sum()
    if observed.sum() == 0 or np.any(expected < SRM_MIN_EXPECTED):
        return 1.0
    # scipy.stats.chisquare's statistic and tail, without its per-call argument handling (a millisecond): this runs
    # on every look of a server posting outcomes one request at a time.
    statistic = float(((observed - expected) ** 2 / expected).sum())
    return float(special.chdtrc(len(observed) - 1, statistic))


# ---------------------------------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ArmConfig:
    """One arm: a version of the model served to a fixed share of keys. ``name`` is how reports and the prediction
    log's experiment columns name it (``v3`` by default)."""

    version: int
    weight: float
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"v{self.version}")


@dataclass(frozen=True)
class ExperimentConfig:
    """What an experiment is fixed to before its first outcome: changing any of it mid-way invalidates the test, so
    a stored state refuses a different config (see :meth:`Experiment.from_dict`)."""

    name: str
    model: str
    arms: tuple[ArmConfig, ...]  # arms[0] is the control
    metric: str
    max_sample: int  # per arm: every arm reaching it without a winner is "no difference"
    kind: str = BINARY
    better: str = HIGHER
    alpha: float = DEFAULT_ALPHA
    min_sample: int = DEFAULT_MIN_SAMPLE
    srm_alpha: float = DEFAULT_SRM_ALPHA
    tau: float | None = None  # mixing sd in the metric's units; None: tuned to the maximum sample
    salt: str | None = None  # routing salt; None: "<model>/<name>/" so experiments route independently

    def __post_init__(self) -> None:
        object.__setattr__(self, "arms", tuple(self.arms))
        problems = []
        if not self.name or not self.model:
            problems.append("an experiment needs a name and a model")
        if len(self.arms) < 2:
            problems.append(f"an experiment needs two or more arms, got {len(self.arms)}")
        names = [a.name for a in self.arms]
        versions = [a.version for a in self.arms]
        if len(set(names)) != len(names):
            problems.append(f"arm names must differ, got {names}")
        if len(set(versions)) != len(versions):
            problems.append(f"each arm serves its own version, got versions {versions}")
        if any(not (math.isfinite(a.weight) and a.weight > 0) for a in self.arms):
            problems.append(f"arm weights must be positive, got {[a.weight for a in self.arms]}")
        if self.kind not in (BINARY, CONTINUOUS):
            problems.append(f"kind must be {BINARY!r} or {CONTINUOUS!r}, got {self.kind!r}")
        if self.better not in (HIGHER, LOWER):
            problems.append(f"better must be {HIGHER!r} or {LOWER!r}, got {self.better!r}")
        for label, value in (("alpha", self.alpha), ("srm_alpha", self.srm_alpha)):
            if not 0.0 < value < 1.0:
                problems.append(f"{label} must be within (0, 1), got {value}")
        if self.min_sample < 2:
            problems.append(f"min_sample must be at least 2 (a variance needs two outcomes), got {self.min_sample}")
        if self.max_sample < self.min_sample:
            problems.append(f"max_sample ({self.max_sample}) must be at least min_sample ({self.min_sample})")
        if self.tau is not None and not (math.isfinite(self.tau) and self.tau > 0):
            problems.append(f"tau must be positive, got {self.tau}")
        if problems:
            raise ValueError(f"experiment {self.name!r}: " + "; ".join(problems))

    @property
    def control(self) -> ArmConfig:
        return self.arms[0]

    @property
    def challengers(self) -> tuple[ArmConfig, ...]:
        return self.arms[1:]

    @property
    def comparison_alpha(self) -> float:
        """α of each challenger-vs-control comparison: α split evenly (Bonferroni)."""
        return self.alpha / len(self.challengers)

    @property
    def weights(self) -> np.ndarray:
        w = np.asarray([a.weight for a in self.arms], dtype="float64")
        return w / w.sum()

    @property
    def planned(self) -> np.ndarray:
        """Each arm's expected count when the smallest arm reaches ``max_sample``: where τ is tuned."""
        w = self.weights
        return self.max_sample * w / w.min()

    @property
    def routing_salt(self) -> str:
        return self.salt if self.salt is not None else f"{self.model}/{self.name}/"

    def arm(self, name: str) -> ArmConfig:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(f"experiment {self.name!r} has no arm {name!r}; arms: {', '.join(a.name for a in self.arms)}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["arms"] = [asdict(a) for a in self.arms]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentConfig:
        fields = dict(data)
        fields["arms"] = tuple(ArmConfig(**a) for a in data["arms"])
        return cls(**fields)


# ---------------------------------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class ArmEstimate:
    name: str
    version: int
    weight: float
    n: int
    mean: float | None
    std: float | None
    interval: tuple[float, float] | None  # 1 - α confidence sequence for the arm's mean


@dataclass(frozen=True)
class Comparison:
    challenger: str
    control: str
    alpha: float  # this comparison's share of α
    p_value: float  # always-valid: the running minimum over looks
    difference: float | None  # challenger - control
    interval: tuple[float, float] | None  # 1 - alpha confidence sequence for the difference
    verdict: str | None  # "better" / "worse" (the challenger, against the control) once significant


@dataclass(frozen=True)
class SrmCheck:
    p_value: float
    flagged: bool
    threshold: float
    observed: dict[str, int]
    expected: dict[str, float]


@dataclass(frozen=True)
class Decision:
    """Where an experiment stands, with the reason written for a person."""

    experiment: str
    model: str
    metric: str
    status: str  # running / winner / no_difference / srm
    winner: str | None
    winner_version: int | None
    alpha: float
    arms: list[ArmEstimate]
    comparisons: list[Comparison]
    srm: SrmCheck
    reason: str
    looks: int
    late: dict[str, int] = field(default_factory=dict)  # outcomes that arrived after the conclusion

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def counts(self) -> dict[str, int]:
        return {a.name: a.n for a in self.arms}

    @property
    def p_values(self) -> dict[str, float]:
        return {c.challenger: c.p_value for c in self.comparisons}

    @property
    def conclusion(self) -> str | None:
        """What the audit log records once: ``winner:v3``, ``no_difference`` or ``srm`` (None while running)."""
        if self.status == RUNNING:
            return None
        return f"{WINNER}:{self.winner}" if self.status == WINNER else self.status

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------- the experiment


class Experiment:
    """The state of one experiment: per-arm sufficient statistics, each comparison's running minimum p-value and
    verdict, and the frozen conclusion once there is one. ``to_dict``/``from_dict`` store and resume it.

    Not thread-safe: a server feeding one experiment from several threads holds a lock around ``observe_many``
    (each call is one look, about half a millisecond)."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        k = len(config.arms)
        self.n = np.zeros(k, dtype="int64")
        self.total = np.zeros(k, dtype="float64")
        self.total_sq = np.zeros(k, dtype="float64")
        self.min_p = np.ones(k - 1, dtype="float64")
        self.verdicts: list[str | None] = [None] * (k - 1)
        self.looks = 0
        self.late = np.zeros(k, dtype="int64")
        self.concluded: dict[str, Any] | None = None  # the statistics at the concluding look, and its status
        self._index = pd.Index([a.name for a in config.arms])

    # ------------------------------------------------------------------ assignment

    def assign(self, keys: Iterable[Any] | pd.Series) -> np.ndarray:
        """The arm name of each key: sticky, the same on every call, process and machine."""
        series = keys if isinstance(keys, pd.Series) else pd.Series(list(keys), dtype=object)
        cfg = self.config
        return routing.assign_weighted(
            series, [a.name for a in cfg.arms], [a.weight for a in cfg.arms], salt=cfg.routing_salt
        )

    def version_of(self, arm: str) -> int:
        return self.config.arm(arm).version

    # ------------------------------------------------------------------ outcomes

    def observe(self, arm: str, outcome: float) -> Decision:
        """One outcome of a key served by ``arm``, then a look."""
        return self.observe_many([arm], [outcome])

    def observe_many(self, arms: Sequence[str] | np.ndarray | pd.Series, outcomes: Any) -> Decision:
        """A batch of outcomes (``arms[i]`` served the key whose outcome is ``outcomes[i]``), then one look. Each
        key's outcome must be fed once: the unit of the test is the key. Refuses the whole batch, changing
        nothing, if an arm is unknown or an outcome is not finite (binary: not 0 or 1)."""
        names = np.asarray(arms, dtype=object)
        y = np.asarray(outcomes, dtype="float64").ravel()
        if names.shape != y.shape:
            raise ValueError(f"{len(names)} arms for {len(y)} outcomes")
        index = self._index.get_indexer(names)
        if np.any(index < 0):
            unknown = sorted({str(a) for a in names[index < 0]})
            raise ValueError(
                f"experiment {self.config.name!r} has no arm {', '.join(unknown)}; arms: {', '.join(self._index)}"
            )
        if not np.all(np.isfinite(y)):
            raise ValueError(f"{int((~np.isfinite(y)).sum())} outcome(s) are missing or not finite")
        if self.config.kind == BINARY and not np.all((y == 0) | (y == 1)):
            bad = sorted({float(v) for v in y[(y != 0) & (y != 1)]})[:5]
            raise ValueError(f"a binary metric takes outcomes 0 or 1 (or booleans), got {bad}")
        if len(y) == 0:
            return self.decision()
        k = len(self.config.arms)
        counts = np.bincount(index, minlength=k)
        if self.concluded is not None:
            self.late += counts
            return self.decision()
        self.n += counts
        self.total += np.bincount(index, weights=y, minlength=k)
        self.total_sq += np.bincount(index, weights=y * y, minlength=k)
        self._look()
        return self.decision()

    # ------------------------------------------------------------------ the test

    def _looks(self, n: np.ndarray, total: np.ndarray, total_sq: np.ndarray) -> Look:
        """All challengers against the control at once (arrays over challengers)."""
        cfg = self.config
        planned = cfg.planned
        return look(
            (n[0], total[0], total_sq[0]),
            (n[1:], total[1:], total_sq[1:]),
            alpha=cfg.comparison_alpha,
            planned=(planned[0], planned[1:]),
            min_sample=cfg.min_sample,
            tau=cfg.tau,
        )

    def _look(self) -> None:
        cfg = self.config
        self.looks += 1
        now = self._looks(self.n, self.total, self.total_sq)
        self.min_p = np.minimum(self.min_p, np.asarray(now.p, dtype="float64"))
        sign = 1.0 if cfg.better == HIGHER else -1.0
        for j, diff in enumerate(np.asarray(now.difference, dtype="float64")):
            if self.verdicts[j] is None and self.min_p[j] <= cfg.comparison_alpha:
                self.verdicts[j] = BETTER if sign * diff > 0 else WORSE
        status, winner = self._status(now, self._srm(self.n))
        if status in FINAL:
            self.concluded = {
                "status": status,
                "winner": winner,
                "n": self.n.tolist(),
                "total": self.total.tolist(),
                "total_sq": self.total_sq.tolist(),
                "min_p": self.min_p.tolist(),
                "verdicts": list(self.verdicts),
                "looks": self.looks,
            }

    def _status(self, now: Look, srm: SrmCheck) -> tuple[str, str | None]:
        cfg = self.config
        if srm.flagged:
            return SRM, None
        if self.n.min() < cfg.min_sample:
            return RUNNING, None
        better = [j for j, v in enumerate(self.verdicts) if v == BETTER]
        if better:
            sign = 1.0 if cfg.better == HIGHER else -1.0
            diffs = np.asarray(now.difference, dtype="float64")
            best = max(better, key=lambda j: sign * diffs[j])
            return WINNER, cfg.challengers[best].name
        if all(v == WORSE for v in self.verdicts):
            return WINNER, cfg.control.name
        if self.n.min() >= cfg.max_sample:
            return NO_DIFFERENCE, None
        return RUNNING, None

    def _srm(self, n: np.ndarray) -> SrmCheck:
        cfg = self.config
        p = srm_p(n, cfg.weights)
        names = [a.name for a in cfg.arms]
        expected = n.sum() * cfg.weights
        return SrmCheck(
            p_value=p,
            flagged=p < cfg.srm_alpha,
            threshold=cfg.srm_alpha,
            observed=dict(zip(names, (int(v) for v in n))),
            expected=dict(zip(names, (float(v) for v in expected))),
        )

    # ------------------------------------------------------------------ reading it

    def decision(self) -> Decision:
        """Where the experiment stands: the frozen conclusion once there is one, else the current state."""
        cfg = self.config
        if self.concluded is not None:
            c = self.concluded
            n = np.asarray(c["n"], dtype="int64")
            total, total_sq = np.asarray(c["total"]), np.asarray(c["total_sq"])
            min_p, verdicts, looks = np.asarray(c["min_p"]), list(c["verdicts"]), int(c["looks"])
            status, winner = c["status"], c["winner"]
        else:
            n, total, total_sq = self.n, self.total, self.total_sq
            min_p, verdicts, looks = self.min_p, self.verdicts, self.looks
        now = self._looks(n, total, total_sq)
        srm = self._srm(n)
        if self.concluded is None:
            status, winner = self._status(now, srm) if looks else (RUNNING, None)
        arms = self._arm_estimates(n, total, total_sq)
        comparisons = [
            Comparison(
                challenger=arm.name,
                control=cfg.control.name,
                alpha=cfg.comparison_alpha,
                p_value=float(min_p[j]),
                difference=_finite(np.asarray(now.difference)[j]),
                interval=_interval(np.asarray(now.lower)[j], np.asarray(now.upper)[j]),
                verdict=verdicts[j],
            )
            for j, arm in enumerate(cfg.challengers)
        ]
        d = Decision(
            experiment=cfg.name,
            model=cfg.model,
            metric=cfg.metric,
            status=status,
            winner=winner,
            winner_version=cfg.arm(winner).version if winner else None,
            alpha=cfg.alpha,
            arms=arms,
            comparisons=comparisons,
            srm=srm,
            reason="",
            looks=looks,
            late={a.name: int(v) for a, v in zip(cfg.arms, self.late) if v},
        )
        return _with_reason(d, cfg)

    def _arm_estimates(self, n: np.ndarray, total: np.ndarray, total_sq: np.ndarray) -> list[ArmEstimate]:
        cfg = self.config
        mean, var = arm_moments(n, total, total_sq)
        with np.errstate(divide="ignore", invalid="ignore"):
            v = var / n
        tau2 = (cfg.tau**2) if cfg.tau is not None else tuned_ratio(cfg.alpha) * var / cfg.planned
        radius = confidence_radius(v, tau2, cfg.alpha)
        return [
            ArmEstimate(
                name=a.name,
                version=a.version,
                weight=float(w),
                n=int(n[i]),
                mean=_finite(mean[i]),
                std=_finite(np.sqrt(var[i])),
                interval=_interval(mean[i] - radius[i], mean[i] + radius[i]),
            )
            for i, (a, w) in enumerate(zip(cfg.arms, cfg.weights))
        ]

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to resume: the config, the sufficient statistics, the running minimum p-values and
        verdicts, and the conclusion. JSON-ready."""
        return {
            "format": STATE_FORMAT,
            "config": self.config.to_dict(),
            "n": self.n.tolist(),
            "total": self.total.tolist(),
            "total_sq": self.total_sq.tolist(),
            "min_p": self.min_p.tolist(),
            "verdicts": list(self.verdicts),
            "looks": self.looks,
            "late": self.late.tolist(),
            "concluded": self.concluded,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], config: ExperimentConfig | None = None) -> Experiment:
        """Resume a stored experiment. Given ``config`` (what the caller runs now), a stored state of a different
        design is refused: the test's guarantee holds only for the design it started with."""
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown experiment state format {data.get('format')!r} (this code reads {STATE_FORMAT})")
        stored = ExperimentConfig.from_dict(data["config"])
        if config is not None and config != stored:
            raise ValueError(
                f"experiment {stored.name!r} was started with a different design; an experiment's arms, weights, "
                "metric, α and sample sizes are fixed when it starts: start a new experiment under a new name"
            )
        exp = cls(stored)
        k = len(stored.arms)
        for attr, dtype, length in (
            ("n", "int64", k),
            ("total", "float64", k),
            ("total_sq", "float64", k),
            ("min_p", "float64", k - 1),
            ("late", "int64", k),
        ):
            value = np.asarray(data[attr], dtype=dtype)
            if value.shape != (length,):
                raise ValueError(f"stored {attr} has {value.size} entries, the design needs {length}")
            setattr(exp, attr, value)
        exp.verdicts = list(data["verdicts"])
        if len(exp.verdicts) != k - 1 or any(v not in (None, BETTER, WORSE) for v in exp.verdicts):
            raise ValueError(f"stored verdicts {exp.verdicts!r} do not fit the design")
        exp.looks = int(data["looks"])
        exp.concluded = data.get("concluded")
        return exp


# ---------------------------------------------------------------------------------------------------- reasons


def _finite(value: Any) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


def _interval(lo: Any, hi: Any) -> tuple[float, float] | None:
    lo, hi = float(lo), float(hi)
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


def _num(value: float | None, kind: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if kind == BINARY else f"{value:.4g}"


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _alpha(a: float) -> str:
    return f"{a:.4g}"


def _with_reason(d: Decision, cfg: ExperimentConfig) -> Decision:
    metric = f"{cfg.metric} rate" if cfg.kind == BINARY else f"mean {cfg.metric}"
    arms = {a.name: a for a in d.arms}
    counts = " + ".join(f"{a.n:,}" for a in d.arms)
    split = (
        f" (α = {_alpha(cfg.alpha)} split over {len(cfg.challengers)} challengers)" if len(cfg.challengers) > 1 else ""
    )
    control = cfg.control.name

    def versus(c: Comparison) -> str:
        return f"{_num(arms[c.challenger].mean, cfg.kind)} vs {_num(arms[control].mean, cfg.kind)}"

    def interval(c: Comparison) -> str:
        if c.interval is None:
            return "no confidence sequence yet"
        level = f"{100 * (1 - c.alpha):.4g}%"
        return f"difference {_num(c.difference, cfg.kind)}, {level} confidence sequence [{_num(c.interval[0], cfg.kind)}, {_num(c.interval[1], cfg.kind)}]"

    if d.status == SRM:
        observed = " / ".join(f"{a.n:,}" for a in d.arms)
        weights = " / ".join(f"{a.weight:.3g}" for a in d.arms)
        reason = (
            f"sample ratio mismatch: {observed} outcomes for weights {weights} (χ² p = {_p(d.srm.p_value)} < "
            f"{_alpha(d.srm.threshold)}): assignment, logging or label arrival differs between the arms, so the "
            "data cannot be trusted and no winner is declared; find the cause before reading this experiment"
        )
    elif d.status == WINNER and d.winner != control:
        c = next(c for c in d.comparisons if c.challenger == d.winner)
        reason = (
            f"{d.winner} beats {control} on {metric}: {versus(c)}, always-valid p = {_p(c.p_value)} ≤ "
            f"{_alpha(c.alpha)}{split} after {counts} outcomes"
        )
    elif d.status == WINNER:
        ps = ", ".join(f"{c.challenger} p = {_p(c.p_value)}" for c in d.comparisons)
        losers = " and ".join(c.challenger for c in d.comparisons)
        means = " vs ".join(_num(a.mean, cfg.kind) for a in d.arms)
        reason = (
            f"{control} beats {losers} on {metric}: {means}, always-valid {ps} ≤ {_alpha(cfg.comparison_alpha)}"
            f"{split} after {counts} outcomes"
        )
    elif d.status == NO_DIFFERENCE:
        parts = []
        for c in d.comparisons:
            if c.verdict is None:
                parts.append(
                    f"{c.challenger} vs {control}: {versus(c)}, {interval(c)}, always-valid p = {_p(c.p_value)} > "
                    f"{_alpha(c.alpha)}"
                )
            else:
                parts.append(f"{c.challenger} is {c.verdict} than {control} (p = {_p(c.p_value)})")
        reason = (
            f"no difference on {metric} at α = {_alpha(cfg.alpha)}{split} after {counts} outcomes (every arm "
            f"reached the maximum of {cfg.max_sample:,}): " + "; ".join(parts) + ". Not significant at α with "
            "this many outcomes per arm: differences outside the confidence sequence are ruled out, smaller ones "
            "are not"
        )
    else:
        short = [a.name for a in d.arms if a.n < cfg.min_sample]
        if short:
            wait = f"waiting for {cfg.min_sample:,} outcomes per arm before any decision ({', '.join(short)} short)"
        else:
            wait = f"no comparison significant yet (maximum {cfg.max_sample:,} per arm)"
        ps = "; ".join(
            f"{c.challenger} vs {control}: {versus(c)}, always-valid p = {_p(c.p_value)}" for c in d.comparisons
        )
        reason = f"running on {metric} after {counts} outcomes, {wait}: {ps}"
    return dataclasses.replace(d, reason=reason)


# ---------------------------------------------------------------------------------------------------- the audit log


def record_decision(reg: Any, experiment: Experiment, *, run_id: str | None = None) -> Any | None:
    """Write the experiment's conclusion (winner, no_difference, or a sample-ratio mismatch) to ``reg``'s audit log
    as an ``experiment`` record, once: a conclusion already recorded for this experiment writes nothing and returns
    None, as does a running experiment, and once a final one (a winner or no difference) is recorded nothing else
    is, so two judges of one experiment (the server on posted outcomes, ``model-ops experiment status`` on joined
    ones) cannot record contradicting verdicts. The record names the winning version (None otherwise), carries the
    reason, the decision with its figures, the design and the state, so the log alone explains and can replay it."""
    d = experiment.decision()
    conclusion = d.conclusion
    if conclusion is None:
        return None
    cfg = experiment.config
    for event in reg.audit(cfg.model):
        if event.kind != RecordKind.EXPERIMENT or event.data.get("experiment") != cfg.name:
            continue
        recorded = event.data.get("conclusion")
        if recorded == conclusion or (isinstance(recorded, str) and _final(recorded)):
            return None
    return reg.record(
        cfg.model,
        RecordKind.EXPERIMENT,
        version=d.winner_version,
        reason=d.reason,
        run_id=run_id,
        details={
            "experiment": cfg.name,
            "conclusion": conclusion,
            "status": d.status,
            "winner": d.winner,
            "decision": d.to_dict(),
            "config": cfg.to_dict(),
            "state": experiment.to_dict(),
        },
    )


def _final(conclusion: str) -> bool:
    return conclusion == NO_DIFFERENCE or conclusion.startswith(WINNER)


def recorded_conclusions(reg: Any, model: str, experiment: str | None = None) -> list[Any]:
    """The conclusions recorded for ``model``'s experiments (of one experiment when named), oldest first; the
    experiments' start and stop records are not conclusions and are left out."""
    return [
        e
        for e in reg.audit(model)
        if e.kind == RecordKind.EXPERIMENT
        and "conclusion" in e.data
        and (experiment is None or e.data.get("experiment") == experiment)
    ]


# ---------------------------------------------------------------------------------------------------- outcomes from labels


def _outcome_label(label: pd.Series, rows: pd.DataFrame) -> pd.Series:
    return pd.to_numeric(label, errors="coerce")


def _outcome_correct(label: pd.Series, rows: pd.DataFrame) -> pd.Series:
    predicted = rows["prediction"]
    numeric_p, numeric_l = pd.to_numeric(predicted, errors="coerce"), pd.to_numeric(label, errors="coerce")
    if numeric_p.notna().all() and numeric_l.notna().all():  # 1 and 1.0 and True are the same class
        same = numeric_p.to_numpy(dtype="float64") == numeric_l.to_numpy(dtype="float64")
    else:
        same = predicted.astype(str).to_numpy() == label.astype(str).to_numpy()
    return pd.Series(same.astype("float64"))


def _error(label: pd.Series, rows: pd.DataFrame) -> np.ndarray:
    return pd.to_numeric(rows["prediction"], errors="coerce").to_numpy() - pd.to_numeric(label, errors="coerce")


# How a served row and its label make the experiment's outcome: the label itself (a business outcome the served
# version influences: delayed, converted, spend), or the served prediction's quality against the label.
OUTCOMES = {
    "label": (_outcome_label, None),
    "correct": (_outcome_correct, "prediction"),
    "abs_error": (lambda label, rows: pd.Series(np.abs(_error(label, rows))), "prediction"),
    "squared_error": (lambda label, rows: pd.Series(_error(label, rows) ** 2), "prediction"),
}


@dataclass(frozen=True)
class JoinedOutcomes:
    """The outcomes of one join, one row per key (``key``, ``arm``, ``model_version``, ``outcome``), and what was left
    out and why, so a join that silently lost most rows cannot pass for a small experiment."""

    frame: pd.DataFrame
    rows: int  # prediction log rows given
    not_served: int  # shadow rows (never returned to a caller)
    other_versions: int  # versions outside the experiment
    misrouted: int  # served by an arm other than the key's sticky assignment (before the experiment, another route)
    already_fed: int
    duplicates: int  # further rows of a key already counted (the key is the unit)
    unlabelled: int  # no outcome yet

    def summary(self) -> str:
        per_arm = self.frame["arm"].value_counts().to_dict() if len(self.frame) else {}
        arms = ", ".join(f"{a} {n:,}" for a, n in sorted(per_arm.items())) or "none"
        return (
            f"{len(self.frame):,} outcomes ({arms}) from {self.rows:,} prediction rows; left out: "
            f"{self.not_served:,} not served, {self.other_versions:,} other versions, {self.misrouted:,} misrouted, "
            f"{self.already_fed:,} already fed, {self.duplicates:,} repeated keys, {self.unlabelled:,} without a label yet"
        )


def join_outcomes(
    experiment: Experiment,
    log: pd.DataFrame,
    labels: pd.Series | pd.DataFrame,
    *,
    key_column: str,
    label_column: str | None = None,
    outcome: str = "label",
    exclude: Iterable[Any] | None = None,
) -> JoinedOutcomes:
    """Outcomes per arm from prediction log rows (``key_column``, ``model_version``, and ``served`` / ``prediction``
    where present) and labels: a Series indexed by key, as :func:`model_ops.data.sources.read_labels` returns from
    the spec's labels table, or a frame with ``key_column`` and ``label_column``.

    A row counts for the arm serving its version only if that arm is also its key's sticky assignment (so rows
    served before the experiment started, or routed by something else, are left out and counted), once per key
    (the key is the unit of randomisation), and only once its label has arrived. ``exclude`` lists keys already
    fed. ``outcome`` is one of :data:`OUTCOMES`."""
    from model_ops.ml.monitoring import join_labels  # sklearn-heavy: only the batch path pays for it

    cfg = experiment.config
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; known: {', '.join(OUTCOMES)}")
    rule, needs = OUTCOMES[outcome]
    required = [key_column, "model_version"] + ([needs] if needs else [])
    missing = [c for c in required if c not in log.columns]
    if missing:
        raise ValueError(f"the prediction log rows have no column(s) {', '.join(missing)}")
    if isinstance(labels, pd.DataFrame):
        if label_column is None or key_column not in labels or label_column not in labels:
            raise ValueError(f"a labels frame needs the key column {key_column!r} and a label_column")
        labels = pd.Series(labels[label_column].to_numpy(), index=labels[key_column].to_numpy())

    rows = log.reset_index(drop=True)  # positions, not the caller's index (which may repeat labels)
    total = len(rows)
    served = rows["served"].fillna(False).astype(bool) if "served" in rows else pd.Series(True, index=rows.index)
    rows = rows[served.to_numpy()]
    not_served = total - len(rows)

    by_version = {a.version: a.name for a in cfg.arms}
    versions = pd.to_numeric(rows["model_version"], errors="coerce")
    arm = versions.map(by_version)
    in_exp = arm.notna().to_numpy()
    other_versions = int((~in_exp).sum())
    rows, arm = rows[in_exp], arm[in_exp]

    sticky = experiment.assign(rows[key_column]) if len(rows) else np.asarray([], dtype=object)
    routed = arm.to_numpy() == sticky
    misrouted = int((~routed).sum())
    rows, arm = rows[routed], arm[routed]

    last = ~rows[key_column].duplicated(keep="last").to_numpy()
    duplicates = int((~last).sum())
    rows, arm = rows[last], arm[last]

    already_fed = 0
    if exclude is not None:
        done = pd.Index(list(exclude)).astype(str)
        fresh = ~rows[key_column].astype(str).isin(done).to_numpy()
        already_fed = int((~fresh).sum())
        rows, arm = rows[fresh], arm[fresh]

    label = join_labels(rows[key_column], labels)
    has = label.notna().to_numpy()
    unlabelled = int((~has).sum())
    rows, arm, label = rows[has], arm[has], label[has]

    values = np.asarray(rule(label.reset_index(drop=True), rows.reset_index(drop=True)), dtype="float64")
    frame = pd.DataFrame(
        {
            "key": rows[key_column].to_numpy(),
            "arm": arm.to_numpy(dtype=object),
            "model_version": versions[rows.index].to_numpy(dtype="int64"),
            "outcome": values,
        }
    )
    return JoinedOutcomes(frame, total, not_served, other_versions, misrouted, already_fed, duplicates, unlabelled)


def feed_outcomes(
    experiment: Experiment,
    log: pd.DataFrame,
    labels: pd.Series | pd.DataFrame,
    **join: Any,
) -> tuple[JoinedOutcomes, Decision]:
    """:func:`join_outcomes`, then the outcomes fed to the experiment as one batch (one look)."""
    joined = join_outcomes(experiment, log, labels, **join)
    decision = experiment.observe_many(joined.frame["arm"].to_numpy(), joined.frame["outcome"].to_numpy())
    return joined, decision


def outcome_values(outcome: str, labels: Sequence[Any], predictions: Sequence[Any] | None = None) -> np.ndarray:
    """The outcome of each key from its label (and the prediction served for it, for the outcomes that judge the
    prediction), by the same rule :func:`join_outcomes` applies: one rule for outcomes posted to the server and
    outcomes joined from the labels table. NaN where a label is not a number the rule can use."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; known: {', '.join(OUTCOMES)}")
    rule, needs = OUTCOMES[outcome]
    label = pd.Series(list(labels), dtype=object)
    label = label.map(lambda v: float(v) if isinstance(v, (bool, np.bool_)) else v)  # true/false are 1 and 0
    served = list(predictions) if predictions is not None else [None] * len(label)
    rows = pd.DataFrame({"prediction": pd.Series(served, dtype=object)} if needs else {}, index=label.index)
    return np.asarray(rule(label, rows), dtype="float64")


# ---------------------------------------------------------------------------------------------------- declared experiments
# An experiment is declared in the audit log: a start record holds its design and outcome rule, a stop record ends
# it. The live server and the batch path route by the running one; its conclusions (record_decision) sit beside.

START = "start"
STOP = "stop"

# What each outcome rule measures by default: its kind and which direction is better.
OUTCOME_DEFAULTS = {
    "correct": (BINARY, HIGHER),
    "label": (BINARY, HIGHER),
    "abs_error": (CONTINUOUS, LOWER),
    "squared_error": (CONTINUOUS, LOWER),
}


@dataclass(frozen=True)
class Declared:
    """An experiment as its start record declared it: the design, the outcome rule (one of :data:`OUTCOMES`), when
    it started, and its stop record's time and reason once stopped. ``started_seq`` (the start record's sequence
    number) identifies it: a server that already follows this experiment keeps its state across rebuilds."""

    config: ExperimentConfig
    outcome: str
    started_seq: int
    started_at: Any  # datetime (UTC) of the start record
    stopped_at: Any = None
    stop_reason: str | None = None

    @property
    def running(self) -> bool:
        return self.stopped_at is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.config.name,
            "model": self.config.model,
            "outcome": self.outcome,
            "running": self.running,
            "started_seq": self.started_seq,
            "started_at": str(self.started_at),
            "stopped_at": None if self.stopped_at is None else str(self.stopped_at),
            "stop_reason": self.stop_reason,
            "config": self.config.to_dict(),
        }


def declared(events: Iterable[Any]) -> list[Declared]:
    """Every experiment started in ``events`` (one model's audit log, oldest first), with its stop when it has one."""
    found: dict[str, Declared] = {}
    for e in events:
        if e.kind != RecordKind.EXPERIMENT:
            continue
        data = e.data
        action, name = data.get("action"), data.get("experiment")
        if action == START and name not in found:
            found[name] = Declared(ExperimentConfig.from_dict(data["config"]), data["outcome"], e.seq, e.ts)
        elif action == STOP and name in found and found[name].running:
            found[name] = dataclasses.replace(found[name], stopped_at=e.ts, stop_reason=e.reason)
    return list(found.values())


def running(events: Iterable[Any]) -> Declared | None:
    """The experiment running on the model whose audit log ``events`` is (at most one runs at a time)."""
    live = [d for d in declared(events) if d.running]
    return live[-1] if live else None


def start(
    reg: Any, config: ExperimentConfig, outcome: str, *, reason: str | None = None, run_id: str | None = None
) -> Any:
    """Declare ``config`` running on its model: a start record in the audit log, which the live server (within one
    poll) and the batch path then route by. Refused (a UsageError naming the problem) for an outcome rule that
    does not fit the design, an arm that is not a version of the model or is archived, a name used before on this
    model, or a model with an experiment running already."""
    from model_ops.registry import attest

    model = config.model
    if outcome not in OUTCOMES:
        raise UsageError(f"unknown outcome {outcome!r}", hint=f"outcomes: {', '.join(OUTCOMES)}")
    if outcome == "correct" and config.kind != BINARY:
        raise UsageError("the outcome 'correct' is 0 or 1 per key, so its kind is binary, not continuous")
    if outcome in ("abs_error", "squared_error") and config.kind != CONTINUOUS:
        raise UsageError(f"the outcome {outcome!r} is a continuous error, so its kind is continuous, not binary")
    archived = reg.policy.retention.archive_stage
    for arm in config.arms:
        try:
            mv = reg.get(model, arm.version)
        except NotFoundError as exc:
            raise UsageError(
                f"arm {arm.name}: {exc.message}",
                hint=f"arms are registered versions of {model}: `model-ops versions {model}` lists them",
            ) from None
        if mv.stage == archived:
            raise UsageError(
                f"arm {arm.name}: {model} v{arm.version} is {archived}, so it cannot take live traffic",
                hint="choose versions that are not archived",
            )
        # an arm answers production traffic, as a canary does: it meets the production stage's signing rule
        attest.require_deployable(reg, model, arm.version)
    try:
        events = reg.audit(model)
    except NotFoundError:
        events = []
    known = declared(events)
    live = [d for d in known if d.running]
    if live:
        raise UsageError(
            f"{model} already runs the experiment {live[0].config.name!r}; one experiment at a time routes a model's "
            "traffic",
            hint=f"stop it first: `model-ops experiment stop {model} --name {live[0].config.name} --reason ...`",
        )
    if any(d.config.name == config.name for d in known):
        raise UsageError(
            f"{model} already had an experiment named {config.name!r}; its outcomes and conclusions keep that name",
            hint="start the new experiment under a new name",
        )
    arms = ", ".join(f"{a.name} v{a.version} at {w:.0%}" for a, w in zip(config.arms, config.weights))
    return reg.record(
        model,
        RecordKind.EXPERIMENT,
        reason=reason or f"experiment {config.name} started: {arms}, outcome {outcome}, α = {config.alpha:g}",
        run_id=run_id,
        details={"experiment": config.name, "action": START, "outcome": outcome, "config": config.to_dict()},
    )


def stop(reg: Any, model: str, name: str, *, reason: str, run_id: str | None = None) -> Any:
    """End the running experiment ``name`` on ``model``: a stop record; the server goes back to the deployment
    manifest's routing within one poll. Its outcomes and conclusions stay in the log and the outcomes table."""
    if not reason or not reason.strip():
        raise UsageError("stopping an experiment needs a reason (it is recorded in the audit log)")
    try:
        events = reg.audit(model)
    except NotFoundError:
        events = []
    found = [d for d in declared(events) if d.config.name == name]
    if not found:
        names = ", ".join(d.config.name for d in declared(events)) or "none"
        raise UsageError(f"{model} has no experiment named {name!r} (experiments: {names})")
    if not found[0].running:
        raise UsageError(f"the experiment {name!r} on {model} was already stopped at {found[0].stopped_at}")
    return reg.record(
        model, RecordKind.EXPERIMENT, reason=reason, run_id=run_id, details={"experiment": name, "action": STOP}
    )
