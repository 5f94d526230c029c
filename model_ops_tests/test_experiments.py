"""A/B experiments: the sequential test keeps its false-positive rate under continuous peeking, finds real effects,
refuses to decide on a sample-ratio mismatch, says "no difference" at the maximum sample, resumes from a stored
state, joins outcomes from labels, and writes each conclusion to the audit log once.

The simulations run the module's own vectorised test (:func:`experiments.look`, the function every
:class:`Experiment` look calls) over thousands of experiments at once, and a cross-check feeds the same batches
through :class:`Experiment` objects to show both reach the same decisions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model_ops.ops import experiments as ex
from model_ops.ops import routing
from model_ops.registry import Registry
from model_ops.vocab import Arm

ALPHA = 0.05


def config(**overrides: object) -> ex.ExperimentConfig:
    fields: dict = dict(
        name="delay-ab",
        model="m",
        arms=(ex.ArmConfig(2, 0.5), ex.ArmConfig(3, 0.5)),
        metric="delayed",
        better=ex.LOWER,
        max_sample=5_000,
        alpha=ALPHA,
    )
    fields.update(overrides)
    return ex.ExperimentConfig(**fields)


def simulate(
    cfg: ex.ExperimentConfig, rates: tuple[float, float], runs: int, batch: int, seed: int
) -> dict[str, np.ndarray]:
    """``runs`` two-arm binary experiments of ``cfg``, peeking after every ``batch`` keys (each key assigned to an
    arm by its weight, as hashing does), until every arm reached ``cfg.max_sample``. Returns, per run, whether and
    in which direction the always-valid test rejected, and whether a naive fixed-horizon z-test read at the same
    looks ever rejected."""
    rng = np.random.default_rng(seed)
    w = cfg.weights
    n = np.zeros((2, runs))
    s = np.zeros((2, runs))
    min_p = np.ones(runs)
    sign_at_reject = np.zeros(runs)
    stopped_at = np.full(runs, np.nan)  # the smaller arm's count at the look that rejected
    naive = np.zeros(runs, dtype=bool)
    planned = cfg.planned
    while n.min() < cfg.max_sample:
        active = n.min(axis=0) < cfg.max_sample  # a run stops looking at the look that reaches its maximum
        to_control = rng.binomial(batch, w[0], size=runs)
        for arm, count in ((0, to_control), (1, batch - to_control)):
            n[arm] += count
            s[arm] += rng.binomial(count, rates[arm])
        now = ex.look(
            (n[0], s[0], s[0]),  # 0/1 outcomes: the sum of squares is the sum
            (n[1], s[1], s[1]),
            alpha=cfg.comparison_alpha,
            planned=(planned[0], planned[1]),
            min_sample=cfg.min_sample,
            tau=cfg.tau,
        )
        p = np.where(active, np.asarray(now.p), 1.0)
        newly = (p <= cfg.comparison_alpha) & (min_p > cfg.comparison_alpha)
        sign_at_reject[newly] = np.sign(np.asarray(now.difference)[newly])
        stopped_at[newly] = n.min(axis=0)[newly]
        min_p = np.minimum(min_p, p)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.asarray(now.difference) / np.sqrt(np.asarray(now.variance))
        naive |= active & (np.minimum(n[0], n[1]) >= cfg.min_sample) & (np.abs(z) > 1.959964)
    rejected = min_p <= cfg.comparison_alpha
    return {"rejected": rejected, "sign": sign_at_reject, "naive": naive, "min_p": min_p, "stopped_at": stopped_at}


# ---------------------------------------------------------------------------------------------------- false positives


def test_false_positive_rate_stays_below_alpha_under_continuous_peeking() -> None:
    """10,000 A/A experiments (18 % delayed in both arms), looked at after every 100 outcomes up to 5,000 per arm
    (about 100 looks each). The always-valid test rejects in at most α of them; the fixed-horizon z-test read at the
    same looks rejects far more often, which shows the simulation can see an inflated rate."""
    cfg = config()
    out = simulate(cfg, (0.18, 0.18), runs=10_000, batch=100, seed=12)
    fpr = out["rejected"].mean()
    naive = out["naive"].mean()
    print(f"A/A false-positive rate: mSPRT {fpr:.4f} (α {ALPHA}), naive peeking z-test {naive:.4f}")
    assert fpr <= ALPHA
    assert naive > 3 * ALPHA
    # The p-values are p-values: under no difference P(p ≤ u) ≤ u at every level, not only at α.
    for u in (0.01, 0.02, 0.1, 0.2):
        assert (out["min_p"] <= u).mean() <= u + 0.005  # 0.005: a few binomial sds of 10,000 runs


@pytest.mark.parametrize(
    ("rate", "min_sample", "max_sample", "batch"),
    [(0.005, 500, 20_000, 500), (0.18, 20, 5_000, 20)],
    ids=["rare-outcome-0.5%", "min-sample-20-peek-every-20"],
)
def test_false_positive_rate_holds_for_rare_outcomes_and_early_looks(
    rate: float, min_sample: int, max_sample: int, batch: int
) -> None:
    """Where the plug-in variance is least trustworthy (a 0.5 % outcome; decisions allowed from 20 outcomes per
    arm) the always-valid test still rejects in at most α of 5,000 A/A experiments."""
    out = simulate(config(min_sample=min_sample, max_sample=max_sample), (rate, rate), runs=5_000, batch=batch, seed=3)
    print(f"A/A at {rate:.1%}, min_sample {min_sample}: false-positive rate {out['rejected'].mean():.4f}")
    assert out["rejected"].mean() <= ALPHA
    assert out["naive"].mean() > 3 * ALPHA


@pytest.mark.slow
def test_false_positive_rate_with_uneven_weights_and_a_continuous_metric() -> None:
    """A/A on a skewed continuous metric (exponential spend, mean 20) at 80/20 weights with three arms' Bonferroni
    split, through the same vectorised look: every comparison's rate stays within its α share."""
    cfg = config(
        arms=(ex.ArmConfig(1, 0.8), ex.ArmConfig(2, 0.1), ex.ArmConfig(3, 0.1)),
        kind=ex.CONTINUOUS,
        better=ex.HIGHER,
        metric="spend",
        max_sample=2_000,
    )
    rng = np.random.default_rng(5)
    runs, batch = 4_000, 200
    w = cfg.weights
    stats = np.zeros((3, 3, runs))  # arm, (n, sum, sum of squares), run
    min_p = np.ones((2, runs))
    while stats[:, 0].min() < cfg.max_sample:
        active = stats[:, 0].min(axis=0) < cfg.max_sample
        counts = rng.multinomial(batch, w, size=runs).T
        for arm in range(3):
            # the sum and sum of squares of `count` exponential draws, drawn per run
            draws = rng.exponential(20.0, size=(runs, int(counts[arm].max())))
            mask = np.arange(draws.shape[1]) < counts[arm][:, None]
            draws = np.where(mask, draws, 0.0)
            stats[arm] += [counts[arm], draws.sum(axis=1), (draws * draws).sum(axis=1)]
        for j in (1, 2):
            now = ex.look(
                tuple(stats[0]),
                tuple(stats[j]),
                alpha=cfg.comparison_alpha,
                planned=(cfg.planned[0], cfg.planned[j]),
                min_sample=cfg.min_sample,
            )
            min_p[j - 1] = np.minimum(min_p[j - 1], np.where(active, now.p, 1.0))
    any_rejected = (min_p <= cfg.comparison_alpha).any(axis=0).mean()
    print(f"A/A 3 arms 80/10/10, exponential metric: any comparison rejected in {any_rejected:.4f} (α {ALPHA})")
    assert any_rejected <= ALPHA


@pytest.mark.slow
def test_experiment_objects_decide_as_the_vectorised_test_does() -> None:
    """The same batches fed through Experiment.observe_many reach the same rejections as the vectorised core, so
    the simulations above judge the code that decides."""
    cfg = config(max_sample=2_000, min_sample=200)
    rng = np.random.default_rng(3)
    runs, batch = 200, 200
    exps = [ex.Experiment(cfg) for _ in range(runs)]
    n = np.zeros((2, runs))
    s = np.zeros((2, runs))
    min_p = np.ones(runs)
    rates = (0.18, 0.165)
    while n.min() < cfg.max_sample:
        active = n.min(axis=0) < cfg.max_sample
        to_control = rng.binomial(batch, 0.5, size=runs)
        ones = [rng.binomial(to_control, rates[0]), rng.binomial(batch - to_control, rates[1])]
        for r, e in enumerate(exps):
            if e.concluded:
                continue
            arms = ["v2"] * int(to_control[r]) + ["v3"] * int(batch - to_control[r])
            y = (
                [1] * int(ones[0][r])
                + [0] * int(to_control[r] - ones[0][r])
                + [1] * int(ones[1][r])
                + [0] * int(batch - to_control[r] - ones[1][r])
            )
            e.observe_many(arms, y)
        for arm, count in ((0, to_control), (1, batch - to_control)):
            n[arm] += count
            s[arm] += ones[arm]
        now = ex.look((n[0], s[0], s[0]), (n[1], s[1], s[1]), alpha=ALPHA, planned=(2_000, 2_000), min_sample=200)
        min_p = np.minimum(min_p, np.where(active, now.p, 1.0))
    decided = np.array([e.decision().status == ex.WINNER for e in exps])
    vectorised = min_p <= ALPHA
    assert decided.any() and (~decided).any()  # both outcomes occur, so agreement means something
    assert (decided == vectorised).all()


# ---------------------------------------------------------------------------------------------------- power


def test_power_a_real_effect_is_found_in_the_right_direction() -> None:
    """18.1 % vs 15.0 % delayed, up to 5,000 per arm: the test names the lower-delay arm in most runs, the wrong one
    in none, and stops before the maximum sample on average."""
    cfg = config()
    out = simulate(cfg, (0.181, 0.150), runs=2_000, batch=100, seed=7)
    right = out["rejected"] & (out["sign"] < 0)  # challenger - control < 0: fewer delays, v3 wins
    wrong = (out["rejected"] & (out["sign"] > 0)).mean()
    median_stop = float(np.median(out["stopped_at"][right]))
    print(
        f"power at 18.1 % vs 15.0 %, 5,000 per arm: right winner {right.mean():.3f}, wrong winner {wrong:.4f}, "
        f"median stop at {median_stop:,.0f} per arm"
    )
    assert right.mean() >= 0.85
    assert wrong <= 0.002
    assert median_stop < 0.8 * cfg.max_sample


def test_smaller_effects_are_found_less_often() -> None:
    """Power grows with the effect: the test is not just rejecting everything."""
    cfg = config()
    power = [
        simulate(cfg, (0.181, 0.181 - effect), runs=1_000, batch=250, seed=9)["rejected"].mean()
        for effect in (0.005, 0.015, 0.03)
    ]
    print("power at effects 0.005, 0.015, 0.03:", ", ".join(f"{p:.3f}" for p in power))
    assert power[0] < power[1] < power[2] and power[0] < 0.15


def test_srm_p_is_the_chi_square_goodness_of_fit() -> None:
    from scipy.stats import chisquare

    for counts, weights in (([10_400, 9_600], [1, 1]), ([900, 120, 95], [0.8, 0.1, 0.1]), ([51, 49], [1, 1])):
        expected = np.asarray(weights) / np.sum(weights) * np.sum(counts)
        assert ex.srm_p(counts, weights) == pytest.approx(chisquare(counts, f_exp=expected).pvalue, rel=1e-9)
    assert ex.srm_p([3, 1], [1, 1]) == 1.0  # too few to judge


def test_winner_declared_with_a_reason_for_a_person() -> None:
    exp = ex.Experiment(config(max_sample=20_000))
    rng = np.random.default_rng(11)
    keys = pd.Series([f"user-{i}" for i in range(40_000)])
    arms = exp.assign(keys)
    rate = np.where(arms == "v3", 0.16, 0.19)
    delayed = rng.random(len(keys)) < rate
    for start in range(0, len(keys), 500):  # the server's outcomes arriving in batches
        d = exp.observe_many(arms[start : start + 500], delayed[start : start + 500])
        if d.final:
            break
    assert d.status == ex.WINNER and d.winner == "v3" and d.winner_version == 3
    (c,) = d.comparisons
    assert c.p_value <= ALPHA and c.verdict == ex.BETTER
    assert c.interval is not None and c.interval[1] < 0  # the whole confidence sequence on the better side
    counts = d.counts
    assert d.reason.startswith("v3 beats v2 on delayed rate: ")
    assert f"{counts['v2']:,} + {counts['v3']:,} outcomes" in d.reason
    assert f"always-valid p = {c.p_value:.3f} ≤ 0.05" in d.reason
    # Final: later outcomes are counted as late and change nothing.
    again = exp.observe_many(["v2"] * 100, [1] * 100)
    assert again.counts == counts and again.late == {"v2": 100} and again.reason == d.reason


def test_control_wins_when_the_challenger_is_worse() -> None:
    exp = ex.Experiment(config(max_sample=20_000))
    rng = np.random.default_rng(2)
    for _ in range(80):
        arms = np.where(rng.random(500) < 0.5, "v2", "v3")
        d = exp.observe_many(arms, rng.random(500) < np.where(arms == "v3", 0.22, 0.18))
        if d.final:
            break
    assert d.status == ex.WINNER and d.winner == "v2"
    assert d.comparisons[0].verdict == ex.WORSE
    assert d.reason.startswith("v2 beats v3 on delayed rate")


def test_three_arms_split_alpha_and_the_better_challenger_wins() -> None:
    cfg = config(arms=(ex.ArmConfig(2, 1.0), ex.ArmConfig(3, 1.0), ex.ArmConfig(4, 1.0)), max_sample=30_000)
    assert cfg.comparison_alpha == pytest.approx(ALPHA / 2)
    exp = ex.Experiment(cfg)
    rng = np.random.default_rng(4)
    rates = {"v2": 0.18, "v3": 0.18, "v4": 0.15}
    for _ in range(200):
        arms = rng.choice(["v2", "v3", "v4"], size=600)
        d = exp.observe_many(arms, rng.random(600) < np.vectorize(rates.get)(arms))
        if d.final:
            break
    assert d.status == ex.WINNER and d.winner == "v4"
    v4 = next(c for c in d.comparisons if c.challenger == "v4")
    assert v4.p_value <= ALPHA / 2 and v4.alpha == pytest.approx(0.025)
    assert "split over 2 challengers" in d.reason


def test_nothing_is_decided_before_the_minimum_sample() -> None:
    """A huge effect on 400 outcomes per arm is still 'running': no look counts before min_sample (500)."""
    exp = ex.Experiment(config(max_sample=2_000))
    half, tenth = [1, 0] * 200, [1] + [0] * 9
    d = exp.observe_many(["v2"] * 400 + ["v3"] * 400, half + tenth * 40)  # 50 % vs 10 % delayed
    assert d.status == ex.RUNNING and d.comparisons[0].p_value == 1.0
    assert "waiting for 500 outcomes per arm" in d.reason
    d = exp.observe_many(["v2"] * 100 + ["v3"] * 100, half[:100] + tenth * 10)
    assert d.status == ex.WINNER and d.winner == "v3"


# ---------------------------------------------------------------------------------------------------- no difference


def test_no_difference_at_the_maximum_sample() -> None:
    cfg = config(max_sample=3_000)
    exp = ex.Experiment(cfg)
    rng = np.random.default_rng(6)  # a run whose p-value moves (0.45 at the end) without reaching α
    statuses, ps = [], []
    while not exp.concluded:
        arms = np.where(rng.random(200) < 0.5, "v2", "v3")
        d = exp.observe_many(arms, rng.random(200) < np.where(arms == "v3", 0.17, 0.18))  # too small to resolve
        statuses.append(d.status)
        ps.append(d.comparisons[0].p_value)
    d = exp.decision()
    assert set(statuses[:-1]) == {ex.RUNNING} and d.status == ex.NO_DIFFERENCE
    assert ps == sorted(ps, reverse=True) and ps[-1] < 1.0  # always-valid p-values never rise
    assert min(d.counts.values()) >= 3_000 and d.winner is None and d.winner_version is None
    (c,) = d.comparisons
    assert c.p_value > ALPHA and c.verdict is None
    assert c.interval is not None and c.interval[0] < 0 < c.interval[1]
    assert "no difference on delayed rate at α = 0.05" in d.reason
    assert "95% confidence sequence" in d.reason and "ruled out" in d.reason
    assert d.conclusion == ex.NO_DIFFERENCE


# ---------------------------------------------------------------------------------------------------- SRM


def test_srm_flags_52_48_at_20000_and_not_a_fair_split() -> None:
    cfg = config(max_sample=100_000)
    assert ex.srm_p([10_400, 9_600], cfg.weights) < 0.001
    assert ex.srm_p([10_050, 9_950], cfg.weights) > 0.001

    skewed = ex.Experiment(cfg)
    # A strong effect, which would be a winner on trustworthy data: the mismatch blocks it.
    d = skewed.observe_many(["v2"] * 10_400 + ["v3"] * 9_600, [1] * 2_000 + [0] * 8_400 + [1] * 1_400 + [0] * 8_200)
    assert d.comparisons[0].p_value <= ALPHA
    assert d.status == ex.SRM and d.winner is None and d.srm.flagged
    assert d.reason.startswith("sample ratio mismatch: 10,400 / 9,600 outcomes for weights 0.5 / 0.5")
    assert not skewed.concluded  # not final: the data says nothing until the cause is found

    fair = ex.Experiment(cfg)
    d = fair.observe_many(["v2"] * 10_050 + ["v3"] * 9_950, [1] * 1_800 + [0] * 8_250 + [1] * 1_790 + [0] * 8_160)
    assert not d.srm.flagged and d.status == ex.RUNNING


def test_srm_threshold_is_configurable_and_follows_uneven_weights() -> None:
    cfg = config(arms=(ex.ArmConfig(2, 0.9), ex.ArmConfig(3, 0.1)), srm_alpha=0.01)
    exp = ex.Experiment(cfg)
    d = exp.observe_many(["v2"] * 9_000 + ["v3"] * 1_000, [0] * 10_000)
    assert not d.srm.flagged  # 90/10 on a 90/10 design
    assert d.srm.expected == {"v2": pytest.approx(9_000), "v3": pytest.approx(1_000)}
    d = exp.observe_many(["v3"] * 100, [0] * 100)  # 9,000 / 1,100: p ≈ 0.002, above 0.001, below 0.01
    assert 0.001 < d.srm.p_value < 0.01 and d.srm.flagged and d.status == ex.SRM


# ---------------------------------------------------------------------------------------------------- persistence


def test_state_round_trips_through_json_and_resumes_identically() -> None:
    cfg = config(max_sample=20_000)
    original = ex.Experiment(cfg)
    rng = np.random.default_rng(21)
    batches = [
        (np.where(rng.random(400) < 0.5, "v2", "v3"), rng.random(400) < 0.17 + 0.02 * (rng.random(400) < 0.5))
        for _ in range(60)
    ]
    for arms, y in batches[:20]:
        original.observe_many(arms, y)
    resumed = ex.Experiment.from_dict(json.loads(json.dumps(original.to_dict())), cfg)
    assert resumed.decision() == original.decision()
    for arms, y in batches[20:]:
        assert resumed.observe_many(arms, y) == original.observe_many(arms, y)
    assert resumed.to_dict() == original.to_dict()


def test_a_stored_state_refuses_a_changed_design() -> None:
    exp = ex.Experiment(config())
    exp.observe_many(["v2", "v3"], [0, 1])
    with pytest.raises(ValueError, match="different design"):
        ex.Experiment.from_dict(exp.to_dict(), config(alpha=0.1))
    state = exp.to_dict()
    state["n"] = [1, 2, 3]
    with pytest.raises(ValueError, match="needs 2"):
        ex.Experiment.from_dict(state)


def test_bad_outcomes_are_refused_and_change_nothing() -> None:
    exp = ex.Experiment(config())
    exp.observe_many(["v2", "v3"], [0, 1])
    before = exp.to_dict()
    with pytest.raises(ValueError, match="no arm v9"):
        exp.observe_many(["v2", "v9"], [0, 1])
    with pytest.raises(ValueError, match="not finite"):
        exp.observe_many(["v2", "v3"], [0, float("nan")])
    with pytest.raises(ValueError, match="0 or 1"):
        exp.observe("v2", 0.5)
    assert exp.to_dict() == before
    with pytest.raises(ValueError, match="two or more arms"):
        config(arms=(ex.ArmConfig(2, 1.0),))
    with pytest.raises(ValueError, match="own version"):
        config(arms=(ex.ArmConfig(2, 1.0), ex.ArmConfig(2, 1.0, name="again")))


# ---------------------------------------------------------------------------------------------------- routing


def test_assignment_is_sticky_weighted_and_the_canary_split_for_two_arms() -> None:
    keys = pd.Series([f"flight-{i}" for i in range(20_000)])
    for w in (0.05, 0.1, 0.3, 0.5):
        two = routing.assign_weighted(keys, [Arm.CANARY.value, Arm.PRODUCTION.value], [w, 1 - w], salt="m")
        assert (two == routing.assign_arms(keys, w, salt="m")).all()
    three = routing.assign_weighted(keys, ["a", "b", "c"], [2, 1, 1], salt="s")
    shares = pd.Series(three).value_counts(normalize=True)
    assert shares["a"] == pytest.approx(0.5, abs=0.015) and shares["c"] == pytest.approx(0.25, abs=0.015)
    assert (routing.assign_weighted(keys[::-1], ["a", "b", "c"], [2, 1, 1], salt="s") == three[::-1]).all()
    exp = ex.Experiment(config())
    assert (exp.assign(keys) == ex.Experiment(config()).assign(keys.tolist())).all()
    # Another experiment on the same model routes independently of this one.
    other = ex.Experiment(config(name="another"))
    assert 0.4 < (exp.assign(keys) == other.assign(keys)).mean() < 0.6


# ---------------------------------------------------------------------------------------------------- labels


def prediction_log(exp: ex.Experiment, n: int) -> pd.DataFrame:
    keys = pd.Series([f"f{i}" for i in range(n)])
    arms = exp.assign(keys)
    versions = np.where(arms == "v2", 2, 3)
    return pd.DataFrame(
        {
            "flight_id": keys,
            "model_version": versions,
            "arm": np.where(arms == "v2", "production", "canary"),
            "served": True,
            "prediction": (np.arange(n) % 2).astype("int64"),
        }
    )


def test_outcomes_are_joined_from_labels_once_per_key_on_their_sticky_arm() -> None:
    exp = ex.Experiment(config())
    log = prediction_log(exp, 2_000)
    rows = pd.concat(  # without ignore_index: the index repeats, as a concatenation of log files' does
        [
            log.iloc[100:],
            log.iloc[100:150],  # the same keys scored again: counted once
            log.iloc[:30].assign(served=False, arm="shadow"),  # shadow rows: never served
            log.iloc[30:50].assign(model_version=1),  # a version outside the experiment
            log.iloc[50:90].assign(model_version=lambda f: np.where(f["model_version"] == 2, 3, 2)),  # misrouted
        ],
    )
    labels = pd.Series(1, index=log["flight_id"].to_numpy())  # delayed ...
    labels[log["flight_id"].iloc[::4].to_numpy()] = 0  # ... except every fourth flight
    waiting = set(log["flight_id"].iloc[1::10])
    labels = labels.drop(list(waiting))  # a tenth has no outcome yet

    joined = ex.join_outcomes(exp, rows, labels, key_column="flight_id")
    assert joined.rows == len(rows)
    assert (joined.not_served, joined.other_versions, joined.misrouted) == (30, 20, 40)
    assert joined.frame["key"].is_unique and joined.duplicates == 50
    served_keys = set(log["flight_id"].iloc[100:])
    assert set(joined.frame["key"]) == served_keys - waiting
    assert joined.unlabelled == len(served_keys & waiting) > 0
    truth = labels.reindex(joined.frame["key"]).to_numpy()
    assert (joined.frame["outcome"].to_numpy() == truth).all()
    assert (joined.frame["arm"].to_numpy() == exp.assign(joined.frame["key"])).all()
    assert (joined.frame["model_version"].to_numpy() == np.where(joined.frame["arm"] == "v2", 2, 3)).all()
    assert "misrouted" in joined.summary()

    # Fed: the experiment counts exactly these outcomes; the keys fed are excluded next time.
    joined2, decision = ex.feed_outcomes(exp, rows, labels, key_column="flight_id")
    per_arm = joined2.frame.groupby("arm")["outcome"].agg(["size", "sum"])
    assert decision.counts == per_arm["size"].to_dict()
    assert exp.total.tolist() == [per_arm.loc["v2", "sum"], per_arm.loc["v3", "sum"]]
    again = ex.join_outcomes(exp, rows, labels, key_column="flight_id", exclude=joined2.frame["key"])
    assert len(again.frame) == 0 and again.already_fed == len(joined2.frame)


def test_outcomes_from_a_labels_frame_and_prediction_quality() -> None:
    exp = ex.Experiment(config(better=ex.HIGHER, metric="correct"))
    log = prediction_log(exp, 400)
    labels = pd.DataFrame({"flight_id": log["flight_id"], "delayed": np.ones(400, dtype=bool)})
    joined = ex.join_outcomes(
        exp, log, labels, key_column="flight_id", label_column="delayed", outcome="correct"
    )  # prediction alternates 0, 1; the label is always True: half are correct
    assert joined.frame["outcome"].to_numpy().tolist() == (log["prediction"] == 1).astype(float).tolist()
    with pytest.raises(ValueError, match="label_column"):
        ex.join_outcomes(exp, log, labels, key_column="flight_id")
    with pytest.raises(ValueError, match="unknown outcome"):
        ex.join_outcomes(exp, log, labels, key_column="flight_id", label_column="delayed", outcome="auc")


# ---------------------------------------------------------------------------------------------------- audit log


def register_versions(reg: Registry, tmp_path: Path, count: int) -> None:
    for i in range(1, count + 1):
        p = tmp_path / f"model-{i}.bin"
        p.write_text(f"model {i}")
        reg.register("m", p)


def test_decisions_reach_the_audit_log_once(reg: Registry, tmp_path: Path) -> None:
    register_versions(reg, tmp_path, 3)
    exp = ex.Experiment(config(max_sample=2_000))
    assert ex.record_decision(reg, exp) is None  # nothing to record while running
    exp.observe_many(["v2"] * 600 + ["v3"] * 600, [1] * 120 + [0] * 480 + [1] * 60 + [0] * 540)
    assert exp.decision().status == ex.WINNER
    event = ex.record_decision(reg, exp, run_id="run-7")
    assert event is not None and event.kind == "experiment" and event.version == 3
    assert event.reason == exp.decision().reason and event.run_id == "run-7"

    # The same conclusion again, from the same object or from a resumed copy, writes nothing.
    before = len(reg.audit("m"))
    assert ex.record_decision(reg, exp) is None
    assert ex.record_decision(reg, ex.Experiment.from_dict(exp.to_dict())) is None
    assert len(reg.audit("m")) == before

    (stored,) = ex.recorded_conclusions(reg, "m", "delay-ab")
    assert stored.data["conclusion"] == "winner:v3" and stored.data["winner"] == "v3"
    replayed = ex.Experiment.from_dict(stored.data["state"])  # the record alone explains the decision
    assert json.loads(json.dumps(replayed.decision().to_dict())) == stored.data["decision"]

    # Another experiment on the same model records its own conclusion.
    srm = ex.Experiment(config(name="second", max_sample=20_000))
    srm.observe_many(["v2"] * 10_400 + ["v3"] * 9_600, [0] * 20_000)
    event = ex.record_decision(reg, srm)
    assert event is not None and event.version is None and event.data["conclusion"] == "srm"
    assert ex.record_decision(reg, srm) is None
    assert [e.data["experiment"] for e in ex.recorded_conclusions(reg, "m")] == ["delay-ab", "second"]


def test_once_a_final_verdict_is_recorded_no_contradicting_one_is(reg: Registry, tmp_path: Path) -> None:
    """Two judges of one experiment (the server on posted outcomes, the CLI on joined ones) can reach different
    verdicts; the first final one recorded stands."""
    register_versions(reg, tmp_path, 3)
    same = ex.Experiment(config(max_sample=600))
    same.observe_many(["v2"] * 600 + ["v3"] * 600, [1] * 120 + [0] * 480 + [1] * 120 + [0] * 480)
    assert same.decision().status == ex.NO_DIFFERENCE
    assert ex.record_decision(reg, same) is not None
    differs = ex.Experiment(config(max_sample=2_000))
    differs.observe_many(["v2"] * 600 + ["v3"] * 600, [1] * 120 + [0] * 480 + [1] * 60 + [0] * 540)
    assert differs.decision().status == ex.WINNER
    assert ex.record_decision(reg, differs) is None
    assert [e.data["conclusion"] for e in ex.recorded_conclusions(reg, "m", "delay-ab")] == ["no_difference"]
