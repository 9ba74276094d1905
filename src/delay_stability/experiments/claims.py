"""The claims ledger: every claim of both papers that a figure or table tests, with a verdict it can
defend (``delay-stability claims-collect`` writes results/<scale>/claims.csv; ``delay-stability
claims`` prints it, writes docs/claims.md and the README's table of reproduced figures).

Each :class:`Claim` states what a paper says (``statement``, ``paper_value``), the statistic that
tests it (``statistic``), the null it is tested against (``null``) and the decision rule (``rule``:
the claim's side of a threshold, or a band). It reads only tidy tables that the pipeline already
writes under results/<scale>/ and results/theory/ (``tables``, names of :data:`TABLES`).

Verdicts (:func:`decide`), with a 95% interval [lo, hi] of the statistic:

    holds           the whole interval lies on the claim's side of the threshold (inside the band)
    does not hold   the whole interval lies on the other side (outside the band)
    unresolved      the interval contains both outcomes; the note gives the number of seeds that
                    would shrink the interval to the distance between the estimate and the
                    threshold, n* = ⌈n · (half-width / distance)²⌉ (half-width ∝ 1/√n), or says
                    why no number of seeds can (one seed: no spread; estimate on the threshold)

Three kinds of interval:

    seeds           percentile interval of a paired bootstrap over seeds: B = N_RESAMPLES resamples
                    of the seeds with replacement, the same resampled seeds for every arm of the
                    claim (so differences are paired by seed), generator PCG64(RNG_SEED): the ledger
                    is deterministic. One seed gives no interval: unresolved. With fewer than
                    T_BELOW seeds the percentile bootstrap is too narrow (with n = 3 it can be no
                    wider than [min, max] of the per-seed values), so a statistic that is linear in
                    the arms' means gets Student's t interval on its per-seed values d_s instead:
                    mean(d) ± t_{n−1, (1+level)/2} · sd(d)/√n (paired by seed: d_s is the statistic
                    of seed s's row); a nonlinear one keeps the bootstrap and its note says so.
    deterministic   runs without seeds (full-batch continuations from one minimum): the interval is
                    the measurement's own resolution (the search's bisection bracket, the spread of
                    the sharpness over the plateau window); n_seeds is empty.
    exact           theory: the interval is the value itself; n_seeds is empty.

A claim whose tables are missing is reported as unresolved with a note naming them, never an error:
the ledger of a partial build lists what it could not test. This module imports no torch.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import files
from ..errors import UserError
from ..theory import critical_alpha, eq8_lr

#: Columns of claims.csv, in this order.
COLUMNS = ("claim", "figure", "statement", "paper_value", "measured", "ci_low", "ci_high", "n_seeds",
           "verdict", "note")
VERDICTS = ("holds", "does not hold", "unresolved")
#: Bootstrap resamples, the generator's seed and the interval's level (stated in every seed note).
N_RESAMPLES = 4000
RNG_SEED = 20200426
LEVEL = 0.95
#: Below this many seeds a statistic linear in the means gets Student's t interval, not the bootstrap.
T_BELOW = 5

# Decision thresholds, one place (each claim's rule quotes the one it uses).
EXACT_TOL = 1e-9            # exact identities (closed forms), relative
EDGE_TOL = 0.10             # measured edge / theory within ±10% (the paper's fig. 2 resolution: 8%)
LINEAR_R2 = 0.99            # "linear" for exact curves and deterministic edges
NOISY_LINEAR_R2 = 0.95      # "linear" for an edge read off a grid of noisy runs (fig. 3)
EQ7_TOL = 0.05              # eq. 7's approximation, relative, for τ ≥ 1
EQUAL_POINTS = 1.0          # "the same error": within ±1 percentage point
PLATEAU_TOL = 0.10          # delayed edge of stability: plateau / (α*/η) within ±10%
PAPER_OVERSHOOT = 7.3       # the paper's 1/√τ arm: α*(0)/(√32·α*(32)) = 7.32 × the edge-preserving η
OVERSHOOT_TOL = 0.05
CROSSING_TOL = 0.1          # a value read off a paper figure: within its grid step (0.1 in μ_S)


# ================================================================ statistics


@dataclass(frozen=True)
class Rule:
    """A decision rule: the statistic is ``>`` or ``<`` ``threshold``, or ``within`` [low, high]."""

    kind: str                 # "greater" | "less" | "within"
    threshold: float = 0.0
    low: float = -math.inf
    high: float = math.inf

    def text(self) -> str:
        if self.kind == "greater":
            return f"holds if the interval lies above {self.threshold:g}; does not hold if it lies at or below"
        if self.kind == "less":
            return f"holds if the interval lies below {self.threshold:g}; does not hold if it lies at or above"
        return (f"holds if the interval lies within [{self.low:g}, {self.high:g}]; does not hold if it lies "
                "wholly outside")

    def boundaries(self) -> list[float]:
        return [self.threshold] if self.kind in ("greater", "less") else [self.low, self.high]


@dataclass
class Result:
    """The measured part of a ledger row."""

    measured: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n_seeds: int | None = None      # None: exact or deterministic (no seeds)
    kind: str = "seeds"             # "seeds" | "deterministic" | "exact" | "missing"
    note: str = ""
    verdict: str | None = None      # set by evaluate() from the rule (or forced: missing inputs)
    method: str = "bootstrap"       # kind "seeds": "bootstrap" (paired percentile) or "t" (Student's t)
    cut: tuple | None = None        # (range low, range high, uncut low, uncut high) when the interval was cut (``within``)


def percentile_interval(stats, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap statistics without interpolation: the order statistics
    at ⌊B·(1−level)/2⌋ and ⌈B·(1+level)/2⌉ − 1 (0-based), so infinite statistics (a target never
    reached) stay well defined."""
    s = np.sort(np.asarray(stats, dtype=float))
    b = len(s)
    lo = int(math.floor(b * (1 - level) / 2))
    hi = int(math.ceil(b * (1 + level) / 2)) - 1
    return float(s[max(lo, 0)]), float(s[min(hi, b - 1)])


def resample_indices(n: int, n_resamples: int = N_RESAMPLES, seed: int = RNG_SEED) -> np.ndarray:
    """(B, n) indices of B bootstrap resamples of n seeds (with replacement), PCG64(seed)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.integers(0, n, size=(n_resamples, n))


def bootstrap_means(x, statistic: Callable, n_resamples: int = N_RESAMPLES, seed: int = RNG_SEED,
                    level: float = LEVEL) -> tuple[float, float, float]:
    """Paired bootstrap of a statistic of the arms' means.

    ``x`` is (n seeds, k arms): row s holds every arm's value for seed s. ``statistic`` maps arm
    means (R, k) to (R,). Every resample draws n seeds with replacement and takes the same rows for
    all arms (pairing). Returns (statistic of the full sample, lo, hi)."""
    x = np.asarray(x, dtype=float)
    est = float(statistic(x.mean(axis=0)[None, :])[0])
    if len(x) < 2:
        return est, est, est
    idx = resample_indices(len(x), n_resamples, seed)
    lo, hi = percentile_interval(statistic(x[idx].mean(axis=1)), level)
    return est, lo, hi


def student_t_interval(d, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, lo, hi) of Student's t interval of the mean of ``d`` (n ≥ 2 values):
    mean ± t_{n−1, (1+level)/2} · s/√n with s the sample standard deviation (ddof 1)."""
    from scipy.stats import t as student_t

    d = np.asarray(d, dtype=float)
    mean = float(d.mean())
    half = float(student_t.ppf((1 + level) / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return mean, mean - half, mean + half


def linear_in_means(x, statistic: Callable) -> bool:
    """Whether ``statistic`` (arm means (R, k) -> (R,)) is linear (affine) in the means on the span
    of the seeds' rows: the statistic of any weighted mean of rows (weights summing to 1) equals the
    same weighted mean of the rows' statistics, checked on the full mean and on 8 random weightings."""
    x = np.asarray(x, dtype=float)
    d = np.asarray(statistic(x), dtype=float)
    if d.shape != (len(x),) or not np.all(np.isfinite(d)):
        return False
    rng = np.random.Generator(np.random.PCG64(RNG_SEED))
    w = np.vstack([np.full(len(x), 1.0 / len(x)), rng.dirichlet(np.ones(len(x)), size=8)])
    scale = max(1.0, float(np.abs(d).max()))
    return bool(np.allclose(statistic(w @ x), w @ d, rtol=1e-9, atol=1e-9 * scale))


@dataclass(frozen=True)
class Interval:
    """A statistic of the seeds with its interval and how it was made ("bootstrap" or "t")."""

    estimate: float
    low: float
    high: float
    method: str = "bootstrap"
    cut: tuple | None = None  # (range low, range high, uncut low, uncut high) when cut at the statistic's range


def within(ci: Interval, bounds) -> Interval:
    """``ci`` intersected with ``bounds`` = (lo, hi), the range the statistic cannot leave (a
    fraction in [0, 1], a difference of accuracies in [−100, 100] points). The true value lies in
    that range, so the cut interval covers it exactly as often: a t interval of few bounded values
    would otherwise reach past it. The cut (range and uncut interval) is recorded when it cuts."""
    if bounds is None:
        return ci
    lo, hi = max(ci.low, bounds[0]), min(ci.high, bounds[1])
    if (lo, hi) == (ci.low, ci.high):
        return ci
    return Interval(ci.estimate, lo, hi, ci.method, (bounds[0], bounds[1], ci.low, ci.high))


def paired_interval(x, statistic: Callable, level: float = LEVEL, bounds=None) -> Interval:
    """The interval of a statistic of the arms' means (``x``: n seeds × k arms, paired by row):
    Student's t on the per-seed statistics when 2 ≤ n < T_BELOW and the statistic is linear in
    the means, else the paired percentile bootstrap (``bootstrap_means``); cut at ``bounds``, the
    statistic's range (``within``), when given."""
    x = np.asarray(x, dtype=float)
    if 2 <= len(x) < T_BELOW and linear_in_means(x, statistic):
        ci = Interval(*student_t_interval(np.asarray(statistic(x), dtype=float), level), method="t")
    else:
        ci = Interval(*bootstrap_means(x, statistic, level=level))
    return within(ci, bounds)


def bootstrap_seeds(seeds, statistic: Callable, n_resamples: int = N_RESAMPLES, seed: int = RNG_SEED,
                    level: float = LEVEL) -> tuple[float, float, float]:
    """Paired bootstrap of any statistic of a multiset of seeds: ``statistic(list of seeds)`` is
    computed on the full sample and on B resamples (the same seeds for every arm it reads)."""
    seeds = list(seeds)
    est = float(statistic(seeds))
    if len(seeds) < 2:
        return est, est, est
    memo = {}   # the statistic of a multiset: n seeds have only C(2n−1, n) distinct resamples

    def of(row):
        key = tuple(sorted(row))
        if key not in memo:
            memo[key] = float(statistic([seeds[i] for i in key]))
        return memo[key]

    lo, hi = percentile_interval([of(row) for row in resample_indices(len(seeds), n_resamples, seed)], level)
    return est, lo, hi


def seeds_needed(n: int, estimate: float, lo: float, hi: float, rule: Rule, method: str = "bootstrap") -> int | None:
    """Seeds that would resolve the claim if the spread stays as observed: the interval's half-width
    shrinks like 1/√n, so n* = ⌈n·(half-width/distance)²⌉ with distance = |estimate − the nearest
    boundary of the rule|. A Student t half-width is first brought to the normal quantile it tends
    to (× z_{(1+level)/2} / t_{n−1, (1+level)/2}): t's own widening with few seeds is not spread.
    None when the estimate is on a boundary (no n resolves it)."""
    dist = min(abs(estimate - b) for b in rule.boundaries() if math.isfinite(b))
    half = (hi - lo) / 2
    if method == "t" and n >= 2:
        from scipy.stats import norm, t as student_t

        half *= float(norm.ppf((1 + LEVEL) / 2) / student_t.ppf((1 + LEVEL) / 2, n - 1))
    if dist == 0 or not math.isfinite(dist):
        return None
    return max(n + 1, int(math.ceil(n * (half / dist) ** 2 - 1e-9)))   # (a rounding error is not a seed)


def decide(lo: float, hi: float, rule: Rule) -> str:
    """The verdict of an interval [lo, hi] under ``rule`` (module docstring)."""
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (lo, hi)):
        return "unresolved"
    if rule.kind == "greater":
        return "holds" if lo > rule.threshold else "does not hold" if hi <= rule.threshold else "unresolved"
    if rule.kind == "less":
        return "holds" if hi < rule.threshold else "does not hold" if lo >= rule.threshold else "unresolved"
    if rule.kind == "within":
        if rule.low <= lo and hi <= rule.high:
            return "holds"
        return "does not hold" if hi < rule.low or lo > rule.high else "unresolved"
    raise ValueError(f"unknown rule kind {rule.kind!r}")


def verdict_and_note(result: Result, rule: Rule) -> tuple[str, str]:
    """The verdict of a result and its note (module docstring)."""
    notes = [result.note] if result.note else []
    if result.kind == "missing" or result.measured is None:
        return "unresolved", "; ".join(notes) or "no value"
    if result.kind == "seeds":
        n = result.n_seeds or 0
        if result.method == "t":
            notes.append(f"{int(LEVEL * 100)}% Student t interval over {n} seeds, paired by seed (fewer than "
                         f"{T_BELOW} seeds: a bootstrap would be too narrow)")
        else:
            notes.append(f"{int(LEVEL * 100)}% paired bootstrap over {n} seed{'' if n == 1 else 's'} "
                         f"({N_RESAMPLES} resamples, PCG64 seed {RNG_SEED})")
            if 2 <= n < T_BELOW:
                notes.append(f"with fewer than {T_BELOW} seeds a percentile bootstrap is too narrow (it spans at "
                             "most the per-seed range) and this statistic is not linear in the means: read the "
                             "interval as optimistic")
        if result.cut is not None:
            lo_r, hi_r, lo_u, hi_u = result.cut
            notes.append(f"the interval [{lo_u:g}, {hi_u:g}] cut at the statistic's range [{lo_r:g}, {hi_r:g}] "
                         "(the true value lies in it: the coverage is unchanged)")
        if n < 2:
            notes.append("one seed: the spread between seeds is unknown, so no interval; "
                         "rerun with more seeds (5 or more) to test it")
            return "unresolved", "; ".join(notes)
    verdict = decide(result.ci_low, result.ci_high, rule)
    if verdict == "unresolved" and result.kind == "seeds" and rule.kind == "within" and rule.low == rule.high:
        notes.append("an all-or-none statistic (every τ, every run): it is resolved when no resample disagrees, "
                     "which more seeds make likelier if the claim is true; the spread gives no sample size")
    elif verdict == "unresolved" and result.kind == "seeds":
        lo, hi = (result.cut[2], result.cut[3]) if result.cut is not None else (result.ci_low, result.ci_high)
        need = seeds_needed(result.n_seeds, result.measured, lo, hi, rule, result.method)  # the spread, uncut
        notes.append(f"about {need} seeds would resolve it at the observed spread" if need
                     else "the estimate sits on the threshold: no number of seeds resolves it")
    elif verdict == "unresolved":
        notes.append("the interval is the measurement's resolution; a finer one would resolve it")
    return verdict, "; ".join(notes)


# ================================================================ the tables the claims read

#: name -> (path under results/ with {scale}, config blocks that produce it; "theory:<fig>" for an
#: exact table of config["theory"], "stability:<fig>" for a figure of the minima-stability blocks)
TABLES = {
    "fig6": ("theory/fig6.csv", ("theory:fig6",)),
    "fig7": ("theory/fig7.csv", ("theory:fig7",)),
    "fig8": ("theory/fig8.csv", ("theory:fig8",)),
    "fig10": ("theory/fig10.csv", ("theory:fig10",)),
    "fig4a": ("theory/fig4a.csv", ("theory:fig4a",)),
    "bridge": ("theory/bridge.csv", ("theory:bridge",)),
    "momentum_theory": ("theory/momentum_theory.csv", ("momentum",)),
    "momentum_fig7": ("theory/momentum_fig7.csv", ("momentum",)),
    "fig2_thresholds": ("{scale}/stability/fig2/thresholds.csv", ("stability:fig2",)),
    "fig2_fits": ("{scale}/stability/fig2/fits.csv", ("stability:fig2",)),
    "fig12_curves": ("{scale}/stability/fig12/curves.csv", ("stability:fig12",)),
    "fig4_thresholds": ("{scale}/stability/fig4/thresholds.csv", ("stability:fig4",)),
    "fig3": ("{scale}/generalization/fig3.csv", ("generalization",)),
    "fig1": ("{scale}/generalization/fig1.csv", ("generalization",)),
    "table1_runs": ("{scale}/generalization/table1_runs.csv", ("table1",)),
    "fig5": ("{scale}/imagenet/fig5.csv", ("imagenet",)),
    "fig9": ("{scale}/imagenet/fig9.csv", ("imagenet",)),
    "spikes": ("{scale}/spikes/spikes.csv", ("spikes", "fig11")),
    "momentum_runs": ("{scale}/momentum/runs.csv", ("momentum",)),
    "momentum_decade_runs": ("{scale}/momentum/decade/runs.csv", ("momentum:decade_grid",)),
    "eos_plateaus": ("{scale}/eos/plateaus.csv", ("eos",)),
    "mitigation_edges": ("{scale}/mitigations/edges.csv", ("mitigations",)),
    "real_outcomes": ("{scale}/real_workers/outcomes.csv", ("real_workers",)),
    "rs_summary": ("{scale}/random_staleness/summary.csv", ("random_staleness",)),
    "rs_edges": ("{scale}/random_staleness/edges.csv", ("random_staleness",)),
}


def table_path(root, scale: str, name: str) -> str:
    return os.path.join(os.fspath(root), TABLES[name][0].format(scale=scale))


def planned_tables(root, scale: str, experiments: dict, theory_figures=(), stability_figures=(),
                   generalization_figures=()) -> dict:
    """name -> path of every table the ledger reads that the configuration builds: ``experiments``
    is the scale's config (its blocks), ``theory_figures`` the exact tables configured,
    ``stability_figures`` and ``generalization_figures`` the figures of those blocks that exist.
    What this leaves out is reported as missing in the ledger."""
    out = {}
    for name, (_, producers) in TABLES.items():
        for p in producers:
            kind, _, fig = p.partition(":")
            ok = (fig in theory_figures if kind == "theory" else fig in stability_figures if kind == "stability"
                  else kind in experiments and (not fig or bool((experiments[kind] or {}).get(fig))))
            if kind == "generalization":
                ok = ok and (name == "fig3" and "fig3" in generalization_figures
                             or name == "fig1" and "fig1" in generalization_figures)
            if ok:
                out[name] = table_path(root, scale, name)
                break
    return out


def read_tables(root, scale: str) -> dict:
    """name -> rows (dicts of strings) of every table of :data:`TABLES` that exists (missing: absent)."""
    out = {}
    for name in TABLES:
        path = table_path(root, scale, name)
        if os.path.exists(path):
            out[name] = files.read_csv(path, f"table {name}")
    return out


# ================================================================ the claims


@dataclass(frozen=True)
class Claim:
    """One claim of a paper and how it is tested (module docstring)."""

    claim: str
    figure: str
    statement: str
    paper_value: str
    statistic: str
    null: str
    rule: Rule
    tables: tuple
    evaluate: Callable = field(repr=False)   # (tables, options) -> Result


def _f(x):
    """A cell as a float; empty, None or unparsable as NaN."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _bool(x) -> bool:
    return str(x).strip().lower() in ("true", "1", "yes")


def exact(value: float, note: str = "") -> Result:
    return Result(measured=value, ci_low=value, ci_high=value, kind="exact",
                  note="exact (theory)" + (f": {note}" if note else ""))


def seeded(ci: Interval, n_seeds: int, note: str = "") -> Result:
    """A result over ``n_seeds`` seeds with its interval (``paired_interval`` or ``bootstrap_seeds``)."""
    return Result(ci.estimate, ci.low, ci.high, n_seeds, method=ci.method, note=note, cut=ci.cut)


def deterministic(value: float, lo: float, hi: float, note: str) -> Result:
    return Result(measured=value, ci_low=lo, ci_high=hi, kind="deterministic", note=note)


def no_result(note: str) -> Result:
    return Result(measured=None, kind="missing", note=note)


def per_seed(rows, arm_col: str, value_col: str, arms, seed_col: str = "seed",
             transform: Callable = lambda v: v) -> tuple[np.ndarray, list]:
    """(n × k array of ``value_col`` for ``arms`` over the seeds that every arm has, those seeds)."""
    by = {}
    for r in rows:
        by.setdefault(r[arm_col], {})[r[seed_col]] = transform(_f(r[value_col]))
    missing = [a for a in arms if a not in by]
    if missing:
        raise KeyError(", ".join(map(str, missing)))
    seeds = sorted(set.intersection(*(set(by[a]) for a in arms)), key=lambda s: _f(s))
    return np.array([[by[a][s] for a in arms] for s in seeds], dtype=float), seeds


def mean_difference(rows, arm_col, value_col, a, b, scale=1.0, seed_col="seed", value_range=None) -> Result:
    """Paired difference of means (arm ``a`` − arm ``b``) × ``scale`` with its interval
    (``paired_interval``), cut at ±scale·(hi − lo) when the values lie in ``value_range`` = (lo, hi)."""
    try:
        x, seeds = per_seed(rows, arm_col, value_col, [a, b], seed_col)
    except KeyError as exc:
        return no_result(f"no rows for arm {exc} in the table")
    if not len(seeds):
        return no_result(f"no seed common to {a} and {b}")
    bounds = None
    if value_range is not None:
        width = scale * (value_range[1] - value_range[0])
        bounds = (-width, width)
    ci = paired_interval(x * scale, lambda m: m[:, 0] - m[:, 1], bounds=bounds)
    return seeded(ci, len(seeds))


# ---------------------------------------------------------------- theory (exact)


def _max_rel(rows, col, ref, keep=lambda r: True) -> float:
    return max(abs(_f(r[col]) - _f(r[ref])) / abs(_f(r[ref])) for r in rows if keep(r))


def _r2(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0:
        return math.nan
    slope, intercept = np.polyfit(x, y, 1)
    ss_res = float(np.sum((y - slope * x - intercept) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


def _slopes(rows, key="momentum", x="tau", y="inv_alpha") -> dict:
    groups = {}
    for r in rows:
        groups.setdefault(_f(r[key]), []).append((_f(r[x]), _f(r[y])))
    return {k: (float(np.polyfit([p[0] for p in v], [p[1] for p in v], 1)[0]), _r2(*zip(*v)))
            for k, v in sorted(groups.items())}


def ev_fig6_closed_form(t, o):
    return exact(_max_rel(t["fig6"], "alpha_star", "alpha_eq6"),
                 f"max over τ = 0..{max(int(_f(r['tau'])) for r in t['fig6'])} of |α* − 2 sin(π/(4τ+2))|/α*")


def ev_fig6_eq7(t, o):
    return exact(_max_rel(t["fig6"], "inv_alpha_eq7", "inv_alpha", lambda r: _f(r["tau"]) >= 1),
                 "max over τ ≥ 1 of |(2τ+1)/π − 1/α*| / (1/α*)")


def _linear_in_mean(name):
    def ev(t, o):
        rows = t[name]
        r2 = _r2([_f(r["mean_delay"]) for r in rows], [_f(r["inv_alpha"]) for r in rows])
        return exact(r2, f"R² of the least-squares line 1/α* vs E[τ] over {len(rows)} delay laws")
    return ev


def ev_fig10(t, o):
    s = _slopes(t["fig10"])
    steps = [b[0] - a[0] for a, b in zip(list(s.values()), list(s.values())[1:])]
    worst_r2 = min(v[1] for v in s.values())
    text = ", ".join(f"m={k:g}: {v[0]:.3g}" for k, v in s.items())
    return exact(min(steps) if steps else math.nan,
                 f"smallest increase of the slope of 1/α* vs τ between consecutive m (slopes {text}); "
                 f"every line R² ≥ {worst_r2:.5f}")


def ev_fig4a(t, o):
    by_tau = {}
    for r in t["fig4a"]:
        by_tau.setdefault(_f(r["tau"]), []).append((_f(r["momentum"]), _f(r["inv_alpha"])))
    drops = []
    for tau, pts in by_tau.items():
        pts.sort()
        if tau >= 1:
            drops.extend(a[1] - b[1] for a, b in zip(pts, pts[1:]))
    return exact(min(drops), "smallest fall of 1/α* between consecutive m at any τ ≥ 1 (positive: η_max grows with m)")


def ev_bridge(t, o):
    rows = t["bridge"]
    cols = rows[0].keys() if rows else ()
    a, b = ("alpha_star", "alpha_momentum") if "alpha_momentum" in cols else (None, None)
    if a is None:
        nums = [c for c in cols if c.startswith("alpha")]
        if len(nums) < 2:
            return no_result(f"bridge.csv has no pair of edge columns ({', '.join(cols)})")
        a, b = nums[0], nums[1]
    return exact(_max_rel(rows, a, b), f"max over q of |{a} − {b}|/{b}")


def _crossing(rows, q):
    pts = sorted((_f(r["mu_s"]), _f(r["optimal_mu_l"])) for r in rows if _f(r["Q"]) == q)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if y0 >= 0 > y1:
            return x0 + (x1 - x0) * y0 / (y0 - y1)
    return math.nan


def _ev_crossing(q):
    def ev(t, o):
        x = _crossing(t["momentum_theory"], q)
        return exact(x, f"μ_S where the rate-optimal μ_L (Theorem 7, Q = {q:g}) changes sign, "
                        "interpolated linearly between grid points")
    return ev


def ev_p2_fig7(t, o):
    rows = t["momentum_fig7"]
    dist = {}
    for r in rows:
        dist[(_f(r["mu_s"]), r["strategy"])] = _f(r["distance"])
    ratios = [dist[(mu, "fixed_0")] / dist[(mu, "tuned")] for (mu, s) in dist
              if s == "tuned" and mu >= 0.4 and (mu, "fixed_0") in dist]
    if not ratios:
        return no_result("momentum_fig7.csv has no tuned and fixed_0 rows at μ_S ≥ 0.4")
    return exact(min(ratios), f"smallest distance(μ_L = 0)/distance(tuned μ_L) over μ_S ≥ 0.4 (Q = 10, 10 steps); "
                              f"largest {max(ratios):.3g}")


# ---------------------------------------------------------------- minima stability (deterministic)


def _bracket_ratio(r):
    """(α_measured/α*, α_escape/α*): the bisection bracket of the edge in units of the theory."""
    a, th = _f(r["alpha_measured"]), _f(r["alpha_theory"])
    esc = _f(r["alpha_escape"])
    return a / th, (esc / th if math.isfinite(esc) else math.inf)


def _edge_result(rows, what):
    if not rows:
        return no_result(f"no {what} rows in the thresholds table")
    ratios = [_f(r["ratio"]) for r in rows]
    brackets = [_bracket_ratio(r) for r in rows]
    worst = max(ratios, key=lambda x: abs(x - 1))
    lo, hi = min(b[0] for b in brackets), max(b[1] for b in brackets)
    outside = [r for r, b in zip(rows, brackets) if b[1] < 1 - EDGE_TOL or b[0] > 1 + EDGE_TOL]
    note = (f"{what}: α_measured/α* at τ = {', '.join(str(int(_f(r['tau']))) for r in rows)}: "
            f"{', '.join(f'{x:.3f}' for x in ratios)}; interval = the union of the searches' bisection brackets "
            "(deterministic: full-batch continuations from one minimum)")
    if outside:  # one τ wholly outside the band decides "does not hold"
        return deterministic(worst, lo, hi, note + f"; τ = {', '.join(r['tau'] for r in outside)} wholly outside")
    return deterministic(worst, lo, hi, note)


def ev_fig2_edge(t, o):
    rows = [r for r in t["fig2_thresholds"] if r["variant"] == "plain"]
    res = _edge_result(rows, "plain A-SGD")
    if res.kind == "deterministic" and "wholly outside" in res.note:
        res.verdict = "does not hold"
    return res


def ev_fig2_linear(t, o):
    rows = [r for r in t["fig2_fits"] if r["variant"] == "plain"]
    if not rows or not r_ok(rows[0]["r2"]):
        return no_result("no fit of plain A-SGD in fits.csv")
    return deterministic(_f(rows[0]["r2"]), _f(rows[0]["r2"]), _f(rows[0]["r2"]),
                         f"R² of 1/η_max = s·τ + c over {rows[0]['n_tau']} delays, slope {_f(rows[0]['slope']):.4g} "
                         "(deterministic)")


def r_ok(x) -> bool:
    return math.isfinite(_f(x))


def ev_fig12(t, o):
    runs = {}
    for r in t["fig12_curves"]:
        runs.setdefault((r["tau"], _f(r["lr_factor"])), []).append(r)
    if not runs:
        return no_result("curves.csv has no continuations")
    agree, lines = 0, []
    for (tau, factor), rs in sorted(runs.items(), key=lambda kv: (_f(kv[0][0]), kv[0][1])):
        rs.sort(key=lambda r: _f(r["epoch"]))
        start = _f(rs[0]["train_loss"])
        losses = [_f(r["train_loss"]) for r in rs]
        left = rs[0]["status"] == "diverged" or any(not math.isfinite(x) or x > 9 * start for x in losses)
        agree += left == (factor > 1)
        lines.append(f"τ={tau} ×{factor:g}: {'left' if left else 'stayed'}")
    frac = agree / len(runs)
    return deterministic(frac, frac, frac, "fraction of continuations that stay below η_max and leave above it "
                                           "(left: the loss grew 9-fold, i.e. the kick 3-fold, or diverged); "
                                           + "; ".join(lines))


def ev_fig4_edge(t, o):
    rows = [r for r in t["fig4_thresholds"] if r["variant"] == "shifted"]
    res = _edge_result(rows, "shifted momentum (m = " + ", ".join(sorted({r["momentum"] for r in rows})) + ")")
    if res.kind == "deterministic" and "wholly outside" in res.note:
        res.verdict = "does not hold"
    return res


def ev_fig4_order(t, o):
    rows = [r for r in t["fig4_thresholds"] if r["variant"] in ("shifted", "plain")]
    by_tau = {}
    for r in rows:
        m = 0.0 if r["variant"] == "plain" else _f(r["momentum"])
        esc = _f(r["lr_escape"])   # no escape found (censored): the bracket is open above
        by_tau.setdefault(_f(r["tau"]), {})[m] = (_f(r["lr_max"]), esc if math.isfinite(esc) else math.inf)
    pairs = []
    for tau, by_m in sorted(by_tau.items()):
        ms = sorted(by_m)
        if tau >= 1 and len(ms) >= 2:
            pairs.extend((by_m[a], by_m[b]) for a, b in zip(ms, ms[1:]))
    if not pairs:
        return no_result("fig4's thresholds have no τ ≥ 1 with two momenta")
    # η_max(m') / η_max(m) for m' > m; the bracket: lower bound lr_max(m')/lr_escape(m)
    ratios = [b[0] / a[0] for a, b in pairs]
    lows = [b[0] / a[1] for a, b in pairs]
    highs = [b[1] / a[0] for a, b in pairs]
    return deterministic(min(ratios), min(lows), min(highs),
                         "smallest η_max(m')/η_max(m) between consecutive momenta at any τ ≥ 1; interval from "
                         "the bisection brackets (deterministic)")


# ---------------------------------------------------------------- generalization (seeds)


def _fig3_rows(t):
    return [{"tau": int(_f(r["tau"])), "lr": _f(r["lr"]), "seed": r["seed"], "val_error": _f(r["val_error"]),
             "failed": _bool(r["failed"])} for r in t["fig3"]]


def _cap_note(runs) -> str:
    """The budget note of ``runs``, (status, epochs run, cap) per run: how many of the runs that did
    not diverge ran to their epoch cap (no steady-state stop)."""
    done = [(e, cap) for status, e, cap in runs if status != "diverged"]
    capped = [cap for e, cap in done if e >= cap]
    caps = sorted({int(cap) for _, _, cap in runs if math.isfinite(cap)})
    return (f"{len(capped)} of {len(done)} converging runs ran to the epoch cap "
            f"({', '.join(map(str, caps)) or 'none'} epochs; no steady-state stop)")


def budget_note(rows) -> str:
    """How many runs of a generalization table ran to their epoch cap (no steady-state stop): the
    paper trains to a steady state (~6,000 epochs for fig. 3), so a claim read at a fixed budget
    says so. ``rows``: one per run (fig3.csv: status, epochs_run, epochs)."""
    return _cap_note([(r.get("status"), _f(r.get("epochs_run")), _f(r.get("epochs"))) for r in rows])


def budget_note_epochs(rows) -> str:
    """``budget_note`` for a table of one row per run and evaluation epoch (fig1.csv, which fig1 and
    fig13 read; it has no cap column): a run is its last row, and one that ends ``completed``
    trained its whole budget, so its last epoch is its cap."""
    last = {}
    for r in rows:
        epoch = _f(r.get("epoch"))
        if r.get("run") not in last or epoch > last[r.get("run")][0]:
            last[r.get("run")] = (epoch, r.get("status"))
    return _cap_note([(status, e, e if status == "completed" else math.inf) for e, status in last.values()])


#: generalization table -> (the columns its budget note reads, the note)
BUDGET_NOTES = {"fig3": ({"epochs", "epochs_run", "status"}, budget_note),
                "fig1": ({"epoch", "status", "run"}, budget_note_epochs)}


def with_budget(ev, table: str = "fig3"):
    """``ev`` with its generalization table's budget note (``BUDGET_NOTES``) appended to its note."""
    columns, note = BUDGET_NOTES[table]

    def wrapped(t, o):
        res = ev(t, o)
        rows = t[table]
        if rows and columns <= set(rows[0]):
            res.note = "; ".join(x for x in (res.note, note(rows)) if x)
        return res
    return wrapped


def _resampled(rows, seeds):
    """The rows of a multiset of seeds (a seed drawn twice counts twice)."""
    by = {}
    for r in rows:
        by.setdefault(r["seed"], []).append(r)
    return [r for s in seeds for r in by.get(s, [])]


def _gen_claims(rows):
    from .generalization import claims as gen_claims
    return gen_claims(rows)


def ev_fig3_linear(t, o):
    rows = _fig3_rows(t)
    seeds = sorted({r["seed"] for r in rows}, key=_f)

    def stat(ss):
        fit = _gen_claims(_resampled(rows, ss))[1]
        return fit["r2"] if fit["r2"] is not None and fit["n_taus"] >= 3 else math.nan

    ci = Interval(*bootstrap_seeds(seeds, stat))
    fit = _gen_claims(rows)[1]
    res = seeded(ci, len(seeds), f"1/η_div over τ = {fit['taus']}; η_div = the smallest η of the grid "
                                 "at which at least half the seeds fail")
    if math.isnan(ci.estimate):
        res.kind, res.measured = "missing", None
        res.note = "fewer than 3 delays have an η_div inside the grid"
    return res


def ev_fig3_best_below(t, o):
    rows = _fig3_rows(t)
    seeds = sorted({r["seed"] for r in rows}, key=_f)

    def stat(ss):
        table = [c for c in _gen_claims(_resampled(rows, ss))[0] if c["eta_div"]]
        return sum(c["best_lr"] < c["eta_div"] for c in table) / len(table) if table else math.nan

    ci = Interval(*bootstrap_seeds(seeds, stat))
    return seeded(ci, len(seeds), "fraction of the delays with an η_div in the grid whose best η "
                                  "(least mean val error) is below η_div")


def _grid_bracket_hit(best, target, grid) -> bool:
    """Whether ``best`` is one of the grid values that bracket ``target`` (or the nearest grid end)."""
    grid = sorted(grid)
    below = [g for g in grid if g <= target]
    above = [g for g in grid if g >= target]
    return best in {below[-1] if below else grid[0], above[0] if above else grid[-1]}


def ev_fig3_eq8(t, o):
    rows = _fig3_rows(t)
    seeds = sorted({r["seed"] for r in rows}, key=_f)
    grid = sorted({r["lr"] for r in rows})

    def stat(ss):
        table = [c for c in _gen_claims(_resampled(rows, ss))[0] if c["tau"] > 0]
        return sum(_grid_bracket_hit(c["best_lr"], c["eq8_lr"], grid) for c in table) / len(table)

    ci = Interval(*bootstrap_seeds(seeds, stat))
    return seeded(ci, len(seeds), "fraction of τ > 0 whose best η is a grid neighbour of eq. 8's "
                                  "η0·α*(τ)/α*(0) (η0: τ = 0's best η)")


def ev_fig3_gap(t, o):
    rows = _fig3_rows(t)
    table, _ = _gen_claims(rows)
    tau = max(c["tau"] for c in table)
    best = {c["tau"]: c["best_lr"] for c in table}
    pick = [r for r in rows if (r["tau"], r["lr"]) in ((0, best[0]), (tau, best[tau]))]
    for r in pick:
        r["arm"] = r["tau"]
    res = mean_difference(pick, "arm", "val_error", tau, 0, scale=100.0, value_range=(0.0, 1.0))
    res.note = (f"val error at τ = {tau} (η {best[tau]:g}) minus τ = 0 (η {best[0]:g}), each at its best η over the "
                "full sample, in points")
    return res


def _fig1_at(rows, epoch=None):
    """(tau, lr, seed) -> val error at ``epoch`` (default: each run's last row)."""
    out = {}
    for r in rows:
        key = (int(_f(r["tau"])), _f(r["lr"]), r["seed"])
        e = _f(r["epoch"])
        if epoch is None and (key not in out or e > out[key][0]) or epoch is not None and e == epoch:
            out[key] = (e, _f(r["val_error"]))
    return {k: v[1] for k, v in out.items()}


def _fig1_best(final, tau):
    by_lr = {}
    for (t_, lr, s), v in final.items():
        if t_ == tau:
            by_lr.setdefault(lr, []).append(v if math.isfinite(v) else 1.0)
    return min(by_lr, key=lambda lr: (sum(by_lr[lr]) / len(by_lr[lr]), lr))


def ev_fig1_gap(t, o):
    final = _fig1_at(t["fig1"])
    taus = sorted({k[0] for k in final})
    tau = max(taus)
    b0, bt = _fig1_best(final, 0), _fig1_best(final, tau)
    rows = [{"arm": k[0], "seed": k[2], "val_error": v} for k, v in final.items()
            if (k[0], k[1]) in ((0, b0), (tau, bt))]
    res = mean_difference(rows, "arm", "val_error", tau, 0, scale=100.0, value_range=(0.0, 1.0))
    res.note = f"final val error at τ = {tau} (best η {bt:g}) minus τ = 0 (best η {b0:g}), in points"
    return res


def ev_fig1_eq8(t, o):
    final = _fig1_at(t["fig1"])
    tau = max(k[0] for k in final)
    grid = sorted({k[1] for k in final if k[0] == tau})
    seeds = sorted({k[2] for k in final}, key=_f)

    def stat(ss):
        sub = {}
        for i, s in enumerate(ss):
            for k, v in final.items():
                if k[2] == s:
                    sub[(k[0], k[1], f"{s}#{i}")] = v
        return float(_grid_bracket_hit(_fig1_best(sub, tau), eq8_lr(_fig1_best(sub, 0), tau), grid))

    ci = Interval(*bootstrap_seeds(seeds, stat))
    b0, bt = _fig1_best(final, 0), _fig1_best(final, tau)
    return seeded(ci, len(seeds), f"1 if τ = {tau}'s best η ({bt:g}) is a grid neighbour of eq. 8's "
                                  f"{eq8_lr(b0, tau):.3g} (η0 = {b0:g})")


def ev_fig13(t, o):
    rows = [r for r in t["fig1"]]
    tau = max(int(_f(r["tau"])) for r in rows)
    epochs = o.get("fig13_epochs") or sorted({_f(r["epoch"]) for r in rows})[1:]
    seeds = sorted({r["seed"] for r in rows}, key=_f)

    def stat(ss):
        bests = []
        for e in epochs:
            at = _fig1_at(rows, float(e))
            sub = {(k[0], k[1], f"{s}#{i}"): v for i, s in enumerate(ss) for k, v in at.items() if k[2] == s}
            bests.append(_fig1_best(sub, tau))
        return sum(b == bests[-1] for b in bests) / len(bests)

    ci = Interval(*bootstrap_seeds(seeds, stat))
    return seeded(ci, len(seeds), f"fraction of the epochs {', '.join(f'{_f(e):g}' for e in epochs)} "
                                  f"at which τ = {tau}'s best η is the final one")


# ---------------------------------------------------------------- Table 1 (seeds)


def _t1_diff(network, a, b):
    def ev(t, o):
        rows = [r for r in t["table1_runs"] if r["network"] == network]
        res = mean_difference(rows, "arm", "val_accuracy", a, b, value_range=(0.0, 100.0))
        res.note = f"{network}: val accuracy {a} − {b}, in points"
        return res
    return ev


# ---------------------------------------------------------------- ImageNet, fig. 9, fig. 11 (seeds)


def _arm_diff(table, col, a, b, what, scale=100.0, value="final_val_error"):
    def ev(t, o):
        res = mean_difference(t[table], col, value, a, b, scale=scale, value_range=(0.0, 1.0))
        res.note = f"{what}: {a} − {b}" + (", in points" if scale == 100.0 else "")
        return res
    return ev


def ev_fig5_ssgd_best(t, o):
    arms = [a for a in ("S-SGD", "standard momentum", "m = 0", "shifted momentum")]
    try:
        x, seeds = per_seed(t["fig5"], "variant", "final_val_error", arms)
    except KeyError as exc:
        return no_result(f"no rows for arm {exc} in fig5.csv")
    ci = paired_interval(100 * x, lambda m: np.min(m[:, 1:] - m[:, [0]], axis=1), bounds=(-100.0, 100.0))
    return seeded(ci, len(seeds), "smallest (A-SGD arm − S-SGD) final val error over standard momentum, "
                                  "m = 0 and shifted momentum, in points")


def _failed(status, train_error) -> float:
    e = _f(train_error)
    return float(status == "diverged" or not math.isfinite(e) or e > 0.5)


def ev_fig5_sqrt_fails(t, o):
    rows = [dict(r, failed=_failed(r["status"], r["final_train_error"])) for r in t["fig5"]
            if r["variant"] == "1/sqrt(tau)"]
    if not rows:
        return no_result("no 1/sqrt(tau) arm in fig5.csv")
    x = np.array([[r["failed"]] for r in rows])
    ci = paired_interval(x, lambda m: m[:, 0], bounds=(0.0, 1.0))
    return seeded(ci, len(rows), "fraction of the 1/√τ arm's runs that do not converge "
                                 "(diverged or final train error > 50%)")


def ev_fig5_overshoot(t, o):
    lr = {r["variant"]: (_f(r["lr"]), int(_f(r["tau"]))) for r in t["fig5"]}
    if "1/sqrt(tau)" not in lr or "S-SGD" not in lr:
        return no_result("fig5.csv lacks the S-SGD or the 1/sqrt(tau) arm")
    eta_s, _ = lr["S-SGD"]
    eta, tau = lr["1/sqrt(tau)"]
    ratio = eta / (eta_s * critical_alpha(tau) / critical_alpha(0))
    return exact(ratio, f"η of the 1/√τ arm / (S-SGD's η·α*(τ)/α*(0)) at τ = {tau} (the configured η); "
                        f"= α*(0)/(√τ·α*(τ)) = {critical_alpha(0) / (math.sqrt(tau) * critical_alpha(tau)):.3g}")


def ev_spikes(a, b):
    def ev(t, o):
        res = mean_difference(t["spikes"], "variant", "spikes", a, b)
        res.note = f"spikes per run: {a} − {b}"
        return res
    return ev


def ev_spikes_shifted(t, o):
    rows = [r for r in t["spikes"] if r["variant"] == "shifted"]
    if not rows:
        return no_result("no shifted runs in spikes.csv")
    ci = paired_interval(np.array([[_f(r["spikes"])] for r in rows]), lambda m: m[:, 0], bounds=(0.0, math.inf))
    return seeded(ci, len(rows), "mean spikes per run with shifted momentum")


# ---------------------------------------------------------------- second paper: momentum vs workers (seeds)


def _momentum_arrays(rows):
    """(workers, momenta, lrs, seeds, steps[M, μ, η, seed] with inf where not reached)."""
    ws = sorted({int(_f(r["workers"])) for r in rows})
    mus = sorted({_f(r["momentum"]) for r in rows})
    lrs = sorted({_f(r["lr"]) for r in rows})
    seeds = sorted({r["seed"] for r in rows}, key=_f)
    steps = np.full((len(ws), len(mus), len(lrs), len(seeds)), np.inf)
    for r in rows:
        v = _f(r["steps_to_target"])
        if _bool(r["reached"]) and math.isfinite(v):
            steps[ws.index(int(_f(r["workers"]))), mus.index(_f(r["momentum"])), lrs.index(_f(r["lr"])),
                  seeds.index(r["seed"])] = v
    return ws, mus, lrs, seeds, steps


def _tuned(steps_resampled):
    """steps[..., R, n] -> tuned steps per (M, μ, R): the best η's mean over the resampled seeds, only
    where every seed reached the target (as momentum.score_rows / tuned_rows)."""
    mean = np.where(np.isfinite(steps_resampled).all(axis=-1), steps_resampled.mean(axis=-1), np.inf)
    return mean.min(axis=2)  # over η


def _momentum_boot(rows, statistic):
    """Paired bootstrap (over seeds) of ``statistic(tuned[M, μ, R], momenta, workers)`` -> (R,)."""
    ws, mus, lrs, seeds, steps = _momentum_arrays(rows)
    n = len(seeds)
    full = statistic(_tuned(steps[..., None, :]), mus, ws)[0]
    if n < 2:
        return float(full), float(full), float(full), n
    idx = resample_indices(n)
    stats = np.concatenate([statistic(_tuned(steps[..., chunk]), mus, ws)
                            for chunk in np.array_split(idx, max(1, len(idx) // 500))])
    lo, hi = percentile_interval(stats)
    return float(full), lo, hi, n


def _best_mu(tuned, mus, allow_negative=True):
    """tuned[M, μ, R] -> best μ[M, R] (ties: the larger μ, as momentum.best_rows); NaN where none reached."""
    mus = np.asarray(mus)
    t = np.where((mus >= 0)[None, :, None] | allow_negative, tuned, np.inf)
    # argmin with ties to the larger μ: flip the μ axis
    best = len(mus) - 1 - np.argmin(t[:, ::-1, :], axis=1)
    out = mus[best].astype(float)
    out[~np.isfinite(t.min(axis=1))] = np.nan
    return out


def ev_p2_best_falls(t, o):
    def stat(tuned, mus, ws):
        b = _best_mu(tuned, mus)
        return b[0] - b[-1]
    est, lo, hi, n = _momentum_boot(t["momentum_runs"], stat)
    return Result(est, lo, hi, n, note="best μ (steps to the target, η tuned) at the fewest workers minus at the most")


def ev_p2_negative(t, o):
    def stat(tuned, mus, ws):
        return _best_mu(tuned, mus)[-1]
    est, lo, hi, n = _momentum_boot(t["momentum_runs"], stat)
    ws = sorted({int(_f(r["workers"])) for r in t["momentum_runs"]})
    return Result(est, lo, hi, n, note=f"best μ (negatives allowed) at M = {ws[-1]}")


def ev_p2_penalty(t, o):
    def stat(tuned, mus, ws):
        best = tuned.min(axis=1)   # [M, R]
        return best[-1] / best[0]
    est, lo, hi, n = _momentum_boot(t["momentum_runs"], stat)
    ws = sorted({int(_f(r["workers"])) for r in t["momentum_runs"]})
    return Result(est, lo, hi, n, note=f"tuned steps to the target at M = {ws[-1]} / at M = {ws[0]}")


def ev_p2_fixed(fixed):
    def ev(t, o):
        def stat(tuned, mus, ws):
            if fixed not in mus:
                return np.full(tuned.shape[-1], np.nan)
            ratio = tuned[:, mus.index(fixed), :] / tuned.min(axis=1)   # [M, R]; inf: never reached
            return ratio[-1]
        est, lo, hi, n = _momentum_boot(t["momentum_runs"], stat)
        ws = sorted({int(_f(r["workers"])) for r in t["momentum_runs"]})
        return Result(est, lo, hi, n, note=f"steps at fixed μ = {fixed:g} / tuned μ at M = {ws[-1]} "
                                           "(inf: no η of the window reached the target for every seed)")
    return ev


GRID_STRIDE = 3   # a coarse η grid: every 3rd η of the window (1.5³ = 3.4× apart at the quick scale)


def ev_p2_grid_offset(t, o):
    """The spread (max − min) of the best μ at the most workers over the GRID_STRIDE offsets of a
    coarse η grid cut from the window: 0 when where the grid falls does not matter."""
    ws, mus, lrs, seeds, steps = _momentum_arrays(t["momentum_runs"])
    if len(lrs) < 2 * GRID_STRIDE:
        return no_result(f"the η window has {len(lrs)} values; a coarse grid needs {2 * GRID_STRIDE}")
    mus_a = np.asarray(mus)

    def stat(s):   # s: steps[M, μ, η, R, n]
        mean = np.where(np.isfinite(s).all(axis=-1), s.mean(axis=-1), np.inf)[-1]   # [μ, η, R] at the most M
        bests = []
        for off in range(GRID_STRIDE):
            t_ = mean[:, off::GRID_STRIDE, :].min(axis=1)                           # [μ, R]
            b = mus_a[len(mus) - 1 - np.argmin(t_[::-1, :], axis=0)].astype(float)
            b[~np.isfinite(t_.min(axis=0))] = np.nan
            bests.append(b)
        bests = np.array(bests)
        return np.nanmax(bests, axis=0) - np.nanmin(bests, axis=0)

    full, lo, hi, n = _seeded_stat(steps, stat)
    return Result(full, lo, hi, n, note=f"range of the best μ at M = {ws[-1]} over the {GRID_STRIDE} offsets of a grid "
                                        f"of every {GRID_STRIDE}rd η ({lrs[1] / lrs[0]:.3g}^{GRID_STRIDE} apart)")


def decade_offsets(lrs) -> list[list[int]]:
    """The decade grids in a set of learning rates (``momentum_tables.decade_lrs``): indices of
    ``lrs`` grouped by the fractional part of log10 η (each group a decade grid top, top/10, ...),
    the group holding the largest η (the paper's grid, offset 0) first, then by falling offset."""
    lrs = [float(x) for x in lrs]
    top = max(lrs)
    groups = {}
    for i, lr in enumerate(lrs):
        j = round((math.log10(top) - math.log10(lr)) % 1.0, 3) % 1.0   # 10^-j: the offset below top
        groups.setdefault(j, []).append(i)
    return [groups[j] for j in sorted(groups)]


def _decade_best(rows):
    """(workers, offsets (``decade_offsets``), the largest η of each offset's grid, seeds, steps[M, μ,
    η, seed], ``best``: steps[M, μ, η, R, n] -> best μ[offset, M, R]) of the decade grid's runs: per
    offset the μ of least mean steps over that grid's η (ties: the larger μ; NaN where no η brought
    every seed to the target)."""
    ws, mus, lrs, seeds, steps = _momentum_arrays(rows)
    offsets = decade_offsets(lrs)
    mus_a = np.asarray(mus)

    def best(s):   # s: steps[M, μ, η, R, n]
        mean = np.where(np.isfinite(s).all(axis=-1), s.mean(axis=-1), np.inf)       # [M, μ, η, R]
        out = []
        for idx in offsets:
            t_ = mean[:, :, idx, :].min(axis=2)                                      # [M, μ, R]
            b = mus_a[len(mus) - 1 - np.argmin(t_[:, ::-1, :], axis=1)].astype(float)   # ties: the larger μ
            b[~np.isfinite(t_.min(axis=1))] = np.nan
            out.append(b)
        return np.array(out)                                                         # [offset, M, R]
    return ws, offsets, [max(lrs[i] for i in o) for o in offsets], seeds, steps, best


def _seeded_stat(steps, stat):
    """(estimate, low, high, n): ``stat(steps[..., R, n]) -> (R,)`` on the seeds as drawn and its 95%
    percentile interval over paired bootstrap resamples of the seeds."""
    n = steps.shape[-1]
    full = float(stat(steps[..., None, :])[0])
    if n < 2:
        return full, full, full, n
    idx = resample_indices(n)
    lo, hi = percentile_interval(np.concatenate([stat(steps[..., c]) for c in np.array_split(idx, 8)]))
    return full, lo, hi, n


def ev_p2_decade_negative(t, o):
    """The best μ at the most workers on the paper's own decade grid (offset 0), undampened."""
    ws, offsets, tops, seeds, steps, best = _decade_best(t["momentum_decade_runs"])
    est, lo, hi, n = _seeded_stat(steps, lambda s: best(s)[0, -1])
    return Result(est, lo, hi, n, note=f"best μ at M = {ws[-1]} on the decade grid {tops[0]:.4g}, "
                                       f"{tops[0] / 10:.4g}, ... (undampened momentum, the paper's protocol)")


def ev_p2_decade_offset(t, o):
    """The spread (max − min) over the decade grid's offsets of the best μ at the most workers."""
    ws, offsets, tops, seeds, steps, best = _decade_best(t["momentum_decade_runs"])
    if len(offsets) < 2:
        return no_result("the decade grid has one offset (momentum.decade_grid.offsets: 1)")

    def spread(s):   # over the offsets with a best μ (NaN in a resample where none has one)
        b = best(s)[:, -1, :]                                                        # [offset, R]
        some = np.isfinite(b).any(axis=0)
        out = np.full(b.shape[1], np.nan)
        out[some] = np.nanmax(b[:, some], axis=0) - np.nanmin(b[:, some], axis=0)
        return out
    full = best(steps[..., None, :])[:, -1, 0]
    est, lo, hi, n = _seeded_stat(steps, spread)
    picks = ", ".join(f"{top:.3g}: " + (f"{mu:+.3g}" if math.isfinite(mu) else "none reached the target")
                      for top, mu in zip(tops, full))
    return Result(est, lo, hi, n, note=f"range of the best μ at M = {ws[-1]} over {len(offsets)} decade grids "
                                       f"(largest η: best μ) {picks}; undampened momentum")


# ---------------------------------------------------------------- beyond the paper


def ev_eos(t, o):
    rows = [r for r in t["eos_plateaus"] if r["series"] == "scaled"]
    if not rows:
        return no_result("no scaled runs in plateaus.csv")
    ratios = [_f(r["ratio"]) for r in rows]
    lo = min(_f(r["plateau_q10"]) / _f(r["predicted"]) for r in rows)
    hi = max(_f(r["plateau_q90"]) / _f(r["predicted"]) for r in rows)
    worst = max(ratios, key=lambda x: abs(x - 1))
    return deterministic(worst, lo, hi, f"plateau/(α*/η) of {len(rows)} runs: {min(ratios):.3f}–{max(ratios):.3f}; "
                                        "interval: the 10%–90% range of the sharpness over the plateau windows "
                                        "(deterministic)")


def ev_mitigations(t, o):
    rows = [r for r in t["mitigation_edges"] if _bool(r["exact"]) and not _bool(r["censored"])
            and math.isfinite(_f(r["ratio"]))]
    if not rows:
        return no_result("no uncensored exact edges in edges.csv")
    ratios = [_f(r["ratio"]) for r in rows]
    worst = max(ratios, key=lambda x: abs(x - 1))
    return deterministic(worst, min(ratios), max(ratios),
                         f"measured/predicted edge of {len(rows)} (rule, τ) with an exact linearisation; interval: "
                         "their range (deterministic searches)")


def _rs_ratio(criterion: str, worst: Callable, keep=lambda row: True, invert=False):
    """Measured edge of random staleness over a criterion's predicted edge (``invert``: predicted over
    measured), per model, reduced by ``worst`` (min or max) over the models ``keep`` selects: paired
    bootstrap over the seeds every model was searched with (edges.csv), predictions from summary.csv."""
    col = f"alpha_{criterion}_edge"

    def ev(t, o):
        pred = {r["model"]: r for r in t["rs_summary"] if _bool(r["measured"]) and keep(r)
                and math.isfinite(_f(r[col])) and _f(r[col]) > 0}
        if not pred:
            return no_result("no measured model with that prediction in summary.csv")
        models = sorted(pred)
        try:
            x, seeds = per_seed(t["rs_edges"], "model", "alpha_measured", models)
        except KeyError as exc:
            return no_result(f"no searches for model {exc} in edges.csv")
        if not len(seeds):
            return no_result("no seed common to every model")
        edge = np.array([_f(pred[m][col]) for m in models])

        def stat(means):
            ratio = edge / means if invert else means / edge
            return worst(ratio, axis=1)

        ci = paired_interval(x, stat)
        means = x.mean(axis=0)
        per_model = edge / means if invert else means / edge
        which = models[int(np.argmin(per_model) if worst is np.min else np.argmax(per_model))]
        return seeded(ci, len(seeds), f"{len(models)} models; the worst is {which}")
    return ev


def _broad(row) -> bool:
    """A broad staleness law: uniform workers with M >= 4 (geometric staleness with q >= 3/4)."""
    return row["landing"] == "uniform" and _f(row["workers"]) >= 4


def _outcome(factor_side, jitter=None):
    def ev(t, o):
        rows = [r for r in t["real_outcomes"] if (_f(r["factor"]) > 1) == (factor_side == "above")
                and (jitter is None or _f(r["jitter"]) == jitter)]
        if not rows:
            return no_result("no continuations on that side of the edge")
        want = "left" if factor_side == "above" else "stayed"
        x = np.array([[float(r["outcome"] == want)] for r in rows])
        ci = paired_interval(x, lambda m: m[:, 0], bounds=(0.0, 1.0))
        return seeded(ci, len(rows), f"fraction of continuations that {want} (repeats pooled over M; "
                                     "resampled like seeds)")
    return ev


# ---------------------------------------------------------------- the list


def _claims_static() -> list[Claim]:
    R = Rule
    within1 = R("within", low=-EQUAL_POINTS, high=EQUAL_POINTS)
    edge_band = R("within", low=1 - EDGE_TOL, high=1 + EDGE_TOL)
    return [
        Claim("fig6.closed_form", "fig6", "The edge of plain A-SGD with constant delay τ is α* = a·η = 2 sin(π/(4τ+2)).",
              "2 sin(π/(4τ+2)) (eq. 6)", "max relative deviation of the root-locus α* from eq. 6",
              "the closed form is wrong for some τ", R("less", EXACT_TOL), ("fig6",), ev_fig6_closed_form),
        Claim("fig6.linear", "fig6", "1/(aη) at the edge is close to (2τ+1)/π: η must fall like 1/τ.",
              "1/(aη) ≈ (2τ+1)/π (eq. 7)", "max relative deviation of (2τ+1)/π from 1/α*, τ ≥ 1",
              f"eq. 7 is off by more than {EQ7_TOL:.0%}", R("less", EQ7_TOL), ("fig6",), ev_fig6_eq7),
        Claim("fig7.linear", "fig7", "With τ ~ unif{1, b}, 1/(aη) at the edge grows linearly with E[τ].",
              "linear in E[τ]", "R² of 1/α* vs E[τ]", f"R² ≤ {LINEAR_R2}", R("greater", LINEAR_R2), ("fig7",),
              _linear_in_mean("fig7")),
        Claim("fig8.linear", "fig8", "With a discretised Gaussian delay, 1/(aη) at the edge grows linearly with E[τ].",
              "linear in E[τ]", "R² of 1/α* vs E[τ]", f"R² ≤ {LINEAR_R2}", R("greater", LINEAR_R2), ("fig8",),
              _linear_in_mean("fig8")),
        Claim("fig10.momentum_steeper", "fig10", "With server momentum, 1/(aη) is still linear in τ, with a higher "
              "slope for larger m.", "slope grows with m", "smallest slope increase between consecutive m",
              "the slope does not grow with m", R("greater", 0.0), ("fig10",), ev_fig10),
        Claim("fig4.shifted_theory", "fig4 (left)", "With shifted momentum the edge improves with m: 1/(aη) falls "
              "as m grows, at every τ ≥ 1.", "1/(aη) falls with m", "smallest fall of 1/α* between consecutive m",
              "some larger m has a lower edge", R("greater", 0.0), ("fig4a",), ev_fig4a),
        Claim("bridge.geometric_is_momentum", "bridge", "A geometric delay P(τ=k) = (1−q)q^k has the edge of "
              "momentum q with dampening, 2(1+q)/(1−q) (second paper: q = 1 − 1/M).", "identical edges",
              "max relative difference of the two edges", "the edges differ", R("less", EXACT_TOL), ("bridge",),
              ev_bridge),
        Claim("fig2.edge", "fig2", "The largest stable η at a minimum of sharpness a is η_max(τ) = α*(τ)/a.",
              "α_measured/α* = 1 (up to 8% sampling resolution)", "α_measured/α* furthest from 1 over τ",
              f"some τ's edge is more than {EDGE_TOL:.0%} off", edge_band, ("fig2_thresholds",), ev_fig2_edge),
        Claim("fig2.linear", "fig2", "1/η_max grows linearly with τ.", "linear (fig. 2 right)",
              "R² of 1/η_max = s·τ + c", f"R² ≤ {LINEAR_R2}", R("greater", LINEAR_R2), ("fig2_fits",), ev_fig2_linear),
        Claim("fig12.stay_leave", "fig12", "Continuations below η_max stay at the minimum; above it they leave.",
              "η > η_max leaves", "fraction of continuations that behave as their side of η_max predicts",
              "some continuation stays above or leaves below", R("within", low=1.0, high=1.0),
              ("fig12_curves",), ev_fig12),
        Claim("fig4.shifted_measured", "fig4 (right)", "With shifted momentum the measured edge follows eq. 11.",
              "markers on the theory lines", "measured/theory edge furthest from 1 over (m, τ)",
              f"some edge is more than {EDGE_TOL:.0%} off", edge_band, ("fig4_thresholds",), ev_fig4_edge),
        Claim("fig4.shifted_grows", "fig4 (right)", "With shifted momentum the measured η_max grows with m.",
              "η_max grows with m", "smallest η_max(m')/η_max(m) between consecutive momenta, τ ≥ 1",
              "η_max does not grow with m", R("greater", 1.0), ("fig4_thresholds",), ev_fig4_order),
        Claim("fig3.linear_threshold", "fig3", "The empirical stability threshold (the η at which runs diverge) "
              "scales linearly with τ: 1/η_div is linear in τ.", "linear", "R² of 1/η_div vs τ",
              f"R² ≤ {NOISY_LINEAR_R2}", R("greater", NOISY_LINEAR_R2), ("fig3",), with_budget(ev_fig3_linear)),
        Claim("fig3.best_below_threshold", "fig3", "The smallest error is obtained at an η somewhat smaller than the "
              "empirical threshold of stability.", "best η < η_div at every τ",
              "fraction of delays whose best η is below η_div", "some τ's best η is at or above η_div",
              R("within", low=1.0, high=1.0), ("fig3",), with_budget(ev_fig3_best_below)),
        Claim("fig3.eq8", "fig3", "The best η of each τ is the one eq. 8 gives, η0·α*(τ)/α*(0) (the vertical line).",
              "best η at eq. 8", "fraction of τ > 0 whose best η is a grid neighbour of eq. 8's",
              "some τ's best η is elsewhere", R("within", low=1.0, high=1.0), ("fig3",), with_budget(ev_fig3_eq8)),
        Claim("fig3.gap", "fig3", "At its best η, the largest delay reaches the validation error of τ = 0 (the "
              "horizontal line).", "no gap at steady state", "paired difference of val error (largest τ − τ = 0), "
              "points", f"the gap exceeds ±{EQUAL_POINTS:g} point", within1, ("fig3",), with_budget(ev_fig3_gap)),
        Claim("fig1.gap", "fig1", "With η decreased ∝ 1/τ, A-SGD (τ = 32) reaches the validation error of the "
              "equivalent large batch (S-SGD, τ = 0).", "no gap at the best η",
              "paired difference of final val error (τ − τ = 0) at each τ's best η, points",
              f"the gap exceeds ±{EQUAL_POINTS:g} point", within1, ("fig1",), with_budget(ev_fig1_gap, "fig1")),
        Claim("fig1.eq8", "fig1", "The best η at τ = 32 matches the proposed scaling (eq. 8).", "η = 0.01",
              "1 if the best η is a grid neighbour of eq. 8's", "the best η is elsewhere",
              R("within", low=1.0, high=1.0), ("fig1",), with_budget(ev_fig1_eq8, "fig1")),
        Claim("fig13.best_lr_stays", "fig13", "The optimal η found in the scan stays the same throughout training.",
              "η = 0.01 at every epoch", "fraction of the evaluated epochs at which the final best η is best",
              "the best η changes", R("within", low=1.0, high=1.0), ("fig1",), with_budget(ev_fig13, "fig1")),
        Claim("fig5.momentum_hurts", "fig5", "Turning off momentum in A-SGD lowers the error: standard momentum is "
              "worse than m = 0.", "28.13% vs 25.49% (+2.64 points)", "paired difference of final val error, points",
              "standard momentum is not worse", R("greater", 0.0), ("fig5",),
              _arm_diff("fig5", "variant", "standard momentum", "m = 0", "fig5")),
        Claim("fig5.shifted_beats_standard", "fig5", "Shifted momentum improves on standard momentum under delay.",
              "25.4% vs 28.13% (−2.73 points)", "paired difference of final val error, points",
              "shifted is not better", R("less", 0.0), ("fig5",),
              _arm_diff("fig5", "variant", "shifted momentum", "standard momentum", "fig5")),
        Claim("fig5.shifted_like_m0", "fig5", "With shifted momentum the error is similar to m = 0.",
              "25.4% vs 25.49% (−0.09 points)", "paired difference of final val error, points",
              f"they differ by more than {EQUAL_POINTS:g} point", within1, ("fig5",),
              _arm_diff("fig5", "variant", "shifted momentum", "m = 0", "fig5")),
        Claim("fig5.ssgd_best", "fig5", "S-SGD (large batch, synchronous) has a lower error than every A-SGD arm.",
              "23.8% vs ≥ 25.4%", "smallest paired (A-SGD arm − S-SGD) difference, points",
              "some A-SGD arm is as good", R("greater", 0.0), ("fig5",), ev_fig5_ssgd_best),
        Claim("fig5.sqrt_fails", "fig5", "With η ∝ 1/√τ instead of 1/τ, training does not converge at all.",
              "does not converge", "fraction of 1/√τ runs that do not converge", "some run converges",
              R("greater", 0.5), ("fig5",), ev_fig5_sqrt_fails),
        Claim("fig5.sqrt_overshoot", "fig5", "The 1/√τ arm overshoots the edge-preserving η by the paper's factor "
              "(α*(0)/(√τ·α*(τ)) = 7.3 at τ = 32): the protocol tests the same overshoot.", f"{PAPER_OVERSHOOT}×",
              "η(1/√τ) / (η_S-SGD·α*(τ)/α*(0))", f"the overshoot differs from {PAPER_OVERSHOOT}× by more than "
              f"{OVERSHOOT_TOL:.0%}", R("within", low=PAPER_OVERSHOOT * (1 - OVERSHOOT_TOL),
                                        high=PAPER_OVERSHOOT * (1 + OVERSHOOT_TOL)), ("fig5",), ev_fig5_overshoot),
        Claim("fig9.gaussian_like_constant", "fig9", "A discretised Gaussian delay gives the error of a constant "
              "delay of the same mean.", "25.3% vs 25.4%", "paired difference of final val error (Gaussian − "
              "constant), points", f"they differ by more than {EQUAL_POINTS:g} point", within1, ("fig9",),
              _arm_diff("fig9", "delay", "gaussian", "constant", "fig9")),
        Claim("fig11.momentum_spikes", "fig11", "A-SGD with momentum has spikes in the training error that shifted "
              "momentum removes.", "spikes with momentum, none with shifted",
              "paired difference of spikes per run (momentum − shifted)", "momentum has no more spikes",
              R("greater", 0.0), ("spikes",), ev_spikes("momentum", "shifted")),
        Claim("fig11.shifted_no_spikes", "fig11", "With shifted momentum the training error has no spikes.",
              "none", "mean spikes per run with shifted momentum", "shifted momentum has spikes (≥ 0.5 per run)",
              R("less", 0.5), ("spikes",), ev_spikes_shifted),
        Claim("fig11.momentum_vs_plain", "fig11", "Momentum causes the spikes: A-SGD without momentum has fewer.",
              "spikes with momentum (red) above without (orange)", "paired difference of spikes per run "
              "(momentum − plain)", "momentum has no more spikes", R("greater", 0.0), ("spikes",),
              ev_spikes("momentum", "plain")),
        Claim("p2.fig6.crossing_q5", "p2 fig6", "The rate-optimal explicit momentum turns negative once the implicit "
              "momentum μ_S exceeds ≈ 0.15 (Q = 5).", "μ_S ≈ 0.15", "μ_S at the sign change (Theorem 7)",
              f"the sign change is more than {CROSSING_TOL} away", R("within", low=0.15 - CROSSING_TOL,
                                                                     high=0.15 + CROSSING_TOL),
              ("momentum_theory",), _ev_crossing(5.0)),
        Claim("p2.fig6.crossing_q20", "p2 fig6", "The rate-optimal explicit momentum turns negative once μ_S exceeds "
              "≈ 0.4 (Q = 20).", "μ_S ≈ 0.4", "μ_S at the sign change (Theorem 7)",
              f"the sign change is more than {CROSSING_TOL} away", R("within", low=0.4 - CROSSING_TOL,
                                                                     high=0.4 + CROSSING_TOL),
              ("momentum_theory",), _ev_crossing(20.0)),
        Claim("p2.fig7.tuning_helps", "p2 fig7", "Tuning the explicit momentum (negative for large μ_S) beats μ_L = 0.",
              "about 1.5×", "smallest distance ratio (μ_L = 0 / tuned) over μ_S ≥ 0.4", "tuning does not help",
              R("greater", 1.0), ("momentum_fig7",), ev_p2_fig7),
        Claim("p2.fig8.best_falls", "p2 fig3, fig8", "The best explicit momentum falls as the number of asynchronous "
              "workers grows.", "0.675 → −0.675 (1 → 16 groups)", "best μ at the fewest workers − at the most",
              "the best μ does not fall", R("greater", 0.0), ("momentum_runs",), ev_p2_best_falls),
        Claim("p2.fig8.negative", "p2 fig8", "With many workers the best explicit momentum is negative.",
              "−0.675 at 16 groups", "best μ at the most workers", "the best μ is ≥ 0", R("less", 0.0),
              ("momentum_runs",), ev_p2_negative),
        Claim("p2.fig4.penalty_grows", "p2 fig4", "Asynchrony has a statistical penalty: more steps to the target "
              "with more workers, even with μ tuned.", "3 at 16 groups (negatives allowed)",
              "tuned steps at the most workers / at M = 1", "no penalty", R("greater", 1.0), ("momentum_runs",),
              ev_p2_penalty),
        Claim("p2.fig4.fixed_momentum", "p2 fig4", "A fixed μ = 0.9 becomes much slower than tuned μ as workers grow.",
              "16 vs 3 at 16 groups", "steps at μ = 0.9 / tuned steps, at the most workers",
              "μ = 0.9 is as fast as tuned", R("greater", 1.0), ("momentum_runs",), ev_p2_fixed(0.9)),
        Claim("p2.grid_offset", "p2 fig8", "The best explicit momentum at the most workers does not depend on "
              "where a coarse η grid falls (the paper tunes η on a decade grid).", "(robustness of fig. 8's −0.675)",
              "range of the best μ over the offsets of a coarse η grid", "the best μ depends on the grid's offset",
              R("less", 1e-9), ("momentum_runs",), ev_p2_grid_offset),
        Claim("p2.decade.negative", "p2 fig8", "Under the paper's own protocol (undampened momentum, η on a "
              "decade grid) the best explicit momentum with many workers is negative.", "−0.675 at 16 groups",
              "best μ at the most workers on the decade grid through the largest η", "the best μ is ≥ 0",
              R("less", 0.0), ("momentum_decade_runs",), ev_p2_decade_negative),
        Claim("p2.decade.offset", "p2 fig8", "Under the paper's own protocol the best explicit momentum at the most "
              "workers does not depend on where the decades of the η grid fall.", "(robustness of fig. 8's −0.675)",
              "range of the best μ over decade grids shifted by 10^(−j/offsets)",
              "the best μ depends on the grid's offset", R("less", 1e-9), ("momentum_decade_runs",),
              ev_p2_decade_offset),
        Claim("eos.plateau", "delayed_eos", "Beyond the paper: full-batch delayed GD self-stabilises with its "
              "sharpness at the delayed edge α*(τ)/η.", "(new)", "plateau/(α*/η) furthest from 1",
              f"some plateau is more than {PLATEAU_TOL:.0%} off", R("within", low=1 - PLATEAU_TOL, high=1 + PLATEAU_TOL),
              ("eos_plateaus",), ev_eos),
        Claim("mitigations.edges", "mitigations", "Beyond the paper: the linearised edge of each published delay "
              "mitigation predicts its measured largest stable η.", "(new)",
              "measured/predicted edge furthest from 1 over rules with an exact linearisation and τ",
              f"some edge is more than {EDGE_TOL:.0%} off", edge_band, ("mitigation_edges",), ev_mitigations),
        Claim("random_staleness.mean_square_safe", "random_staleness", "Beyond the paper: the mean-square edge "
              "(ρ(E[A⊗A])) is a safe prediction of the largest stable η under random staleness: no measured edge "
              f"falls more than {EDGE_TOL:.0%} below it.", "(new)",
              "min over models of measured edge / mean-square edge", "some measured edge is below it",
              R("greater", 1 - EDGE_TOL), ("rs_summary", "rs_edges"), _rs_ratio("mean_square", np.min)),
        Claim("random_staleness.almost_sure_bound", "random_staleness", "Beyond the paper: no measured edge of "
              f"random staleness exceeds the almost-sure edge (top Lyapunov exponent) by more than {EDGE_TOL:.0%}.",
              "(new)", "max over models of measured edge / almost-sure edge", "some measured edge is above it",
              R("less", 1 + EDGE_TOL), ("rs_summary", "rs_edges"), _rs_ratio("almost_sure", np.max)),
        Claim("random_staleness.eq19_optimistic", "random_staleness", "Beyond the paper: for broad staleness laws "
              "(M >= 4 uniform workers: geometric staleness) eq. 19's mean edge overestimates the largest stable η.",
              "(eq. 19: 4M − 2 for uniform workers)", "min over those models of eq. 19's edge / measured edge",
              f"eq. 19 is within {EDGE_TOL:.0%} or below", R("greater", 1 + EDGE_TOL), ("rs_summary", "rs_edges"),
              _rs_ratio("mean", np.min, keep=_broad, invert=True)),
        Claim("real_workers.leave_above", "real_staleness", "Beyond the paper: real workers leave the minimum at "
              "1.4× the edge eq. 19 predicts from their measured staleness.", "(new)",
              "fraction of continuations above the predicted edge that left", "at most half leave",
              R("greater", 0.5), ("real_outcomes",), _outcome("above")),
        Claim("real_workers.stay_below.no_jitter", "real_staleness", "Beyond the paper: without jitter, real workers "
              "stay at 0.7× the predicted edge.", "(new)", "fraction of continuations below the edge that stayed",
              "at most half stay", R("greater", 0.5), ("real_outcomes",), _outcome("below", 0.0)),
        Claim("real_workers.stay_below.jitter", "real_staleness", "Beyond the paper: with a 20 ms exponential jitter "
              "(near-geometric staleness), real workers stay at 0.7× eq. 19's predicted edge.", "(new)",
              "fraction of continuations below the edge that stayed", "at most half stay", R("greater", 0.5),
              ("real_outcomes",), _outcome("below", 0.02)),
    ]


TABLE1_CLAIMS = (
    # (suffix, statement, arms a − b, rule, paper value per network from table1.PAPER)
    ("asgd_worse", "A-SGD at the small-batch η is worse than SB (the paper: does not converge).", ("SB", "ASGD"),
     "greater"),
    ("lr_recovers", "Scaling η by α*(τ)/α*(0) (+LR) recovers from A-SGD's failure.", ("+LR", "ASGD"), "greater"),
    ("lr_gap_to_lb", "+LR stays below the large batch (LB) it emulates.", ("LB", "+LR"), "greater"),
    ("epochs_help", "30% more epochs improve on +LR.", ("+30%", "+LR"), "greater"),
)


def table1_claims(networks) -> list[Claim]:
    """Four claims per network of Table 1 (names from the table: the ledger follows the scale)."""
    from .table1_tables import PAPER

    out = []
    for net in networks:
        paper = PAPER.get(net) or PAPER["ResNet-44"]
        src = "" if net in PAPER else " (paper row: ResNet-44)"
        for suffix, statement, (a, b), _ in TABLE1_CLAIMS:
            out.append(Claim(
                f"table1.{re.sub(r'[^A-Za-z0-9]+', '-', net).strip('-').lower()}.{suffix}", "table1",
                f"{net}: {statement}", f"{paper[a]:g} vs {paper[b]:g} ({paper[a] - paper[b]:+.2f} points){src}",
                f"paired difference of val accuracy ({a} − {b}), points", f"{a} is not above {b}",
                Rule("greater", 0.0), ("table1_runs",), _t1_diff(net, a, b)))
    return out


def all_claims(tables: dict) -> list[Claim]:
    """Every claim; Table 1's per network found in table1_runs.csv (the quick stand-ins when absent)."""
    static = _claims_static()
    nets = list(dict.fromkeys(r["network"] for r in tables.get("table1_runs", [])))
    t1 = table1_claims(nets or ["mlp-digits", "cnn-digits"])
    i = next(k for k, c in enumerate(static) if c.figure.startswith("fig5"))
    return static[:i] + t1 + static[i:]


# ================================================================ the ledger


def _fmt(x) -> str:
    if x is None:
        return ""
    x = float(x)
    if math.isnan(x):
        return ""
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.6g}"


def evaluate(claim: Claim, tables: dict, options: dict, scale: str = "quick") -> dict:
    """One ledger row (COLUMNS) of ``claim`` from ``tables`` (name -> rows)."""
    missing = [n for n in claim.tables if n not in tables]
    if missing:
        paths = ", ".join(TABLES[n][0].format(scale=scale) for n in missing)
        result = no_result(f"table missing: results/{paths} (not built: the scale does not configure it, or "
                           "the build stopped before it)")
    else:
        try:
            result = claim.evaluate(tables, options)
        except (KeyError, ValueError, ZeroDivisionError, IndexError) as exc:
            result = no_result(f"cannot evaluate from the tables ({exc.__class__.__name__}: {exc})")
    verdict, note = verdict_and_note(result, claim.rule)
    if result.verdict:
        verdict = result.verdict
    return {"claim": claim.claim, "figure": claim.figure, "statement": claim.statement,
            "paper_value": claim.paper_value, "measured": _fmt(result.measured),
            "ci_low": _fmt(result.ci_low), "ci_high": _fmt(result.ci_high),
            "n_seeds": "" if result.n_seeds is None else str(result.n_seeds), "verdict": verdict, "note": note}


def ledger(root, scale: str, options: dict | None = None) -> list[dict]:
    """Every claim's ledger row, from the tables under ``root`` (results/) at ``scale``."""
    tables = read_tables(root, scale)
    return [evaluate(c, tables, options or {}, scale) for c in all_claims(tables)]


def write_ledger(root, scale: str, out, options: dict | None = None) -> list[dict]:
    rows = ledger(root, scale, options)
    files.write_csv(out, list(COLUMNS), rows)
    return rows


def read_ledger(path, scale: str) -> list[dict]:
    """The rows of claims.csv; a missing ledger is a UserError naming the command that builds it."""
    if not os.path.exists(path):
        build = f"snakemake --cores 2 {path}" + ("" if scale == "quick" else f" --config scale={scale}")
        raise UserError(f"no claims ledger for scale {scale!r}: {path} does not exist; build it with "
                        f"`{build}`" + (" (or `make figures`)" if scale == "quick" else ""))
    return files.read_csv(path, "claims ledger", columns=COLUMNS)


# ---------------------------------------------------------------- rendering


def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _interval(r) -> str:
    if not r["ci_low"] and not r["ci_high"]:
        return ""
    if r["ci_low"] == r["ci_high"] == r["measured"]:
        return "exact" if r["note"].startswith("exact") else ""
    return f"[{r['ci_low']}, {r['ci_high']}]"


def markdown_table(rows: list[dict], with_notes: bool = True) -> str:
    """The ledger as a Markdown table (the verdicts in bold)."""
    cols = ["claim", "figure", "statement", "paper", "measured", "95% interval", "seeds", "verdict"]
    if with_notes:
        cols.append("note")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"`{r['claim']}`", r["figure"], r["statement"], r["paper_value"], r["measured"], _interval(r),
                 r["n_seeds"], f"**{r['verdict']}**"]
        if with_notes:
            cells.append(r["note"])
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def definitions_table(claims: list[Claim]) -> str:
    """How each claim is tested: statistic, null, decision rule."""
    lines = ["| claim | statistic | null | decision rule | tables |", "|---|---|---|---|---|"]
    for c in claims:
        lines.append("| " + " | ".join(_md(x) for x in (
            f"`{c.claim}`", c.statistic, c.null, c.rule.text(),
            ", ".join(f"`{TABLES[n][0]}`" for n in c.tables))) + " |")
    return "\n".join(lines) + "\n"


def claims_page(rows: list[dict], scale: str, claims: list[Claim] | None = None) -> str:
    """docs/claims.md: the ledger, the counts of verdicts, and how each claim is tested."""
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    if claims is None:   # the claims of this ledger: Table 1's networks are those its rows name
        nets = list(dict.fromkeys(r["statement"].split(":")[0] for r in rows if r["figure"] == "table1"))
        claims = all_claims({"table1_runs": [{"network": n} for n in nets]})
        names = {r["claim"] for r in rows}
        claims = [c for c in claims if c.claim in names]
    return (
        f"# Claims ledger ({scale} scale)\n\n"
        f"Generated by `delay-stability claims --scale {scale} --markdown docs/claims.md` from "
        f"`results/{scale}/claims.csv` (`make figures` writes both); do not edit by hand.\n\n"
        f"{len(rows)} claims: {counts['holds']} hold, {counts['does not hold']} do not hold, "
        f"{counts['unresolved']} unresolved.\n\n"
        "A verdict is `holds` when the whole 95% interval lies on the claim's side of its threshold, `does not "
        "hold` when it lies wholly on the other side, and `unresolved` when it contains both (the note then says "
        "how many seeds would resolve it at the observed spread, n* = ⌈n·(half-width/distance)²⌉). Intervals: a "
        f"paired percentile bootstrap over seeds ({N_RESAMPLES} resamples, PCG64 seed {RNG_SEED}; one seed: "
        f"unresolved; with 2 to {T_BELOW - 1} seeds, Student's t on the per-seed paired values where the statistic "
        "is linear in the means); for deterministic runs the measurement's resolution (a bisection bracket); exact for theory. "
        "Code: `src/delay_stability/experiments/claims.py`.\n\n"
        f"{markdown_table(rows)}\n## How each claim is tested\n\n{definitions_table(claims)}")


README_BEGIN = "<!-- claims:begin (generated by `delay-stability claims --readme README.md`; do not edit) -->"
README_END = "<!-- claims:end -->"


def readme_table(rows: list[dict], scale: str) -> str:
    """The README's table of reproduced figures: one line per figure, its claims' verdicts and numbers."""
    by_fig = {}
    for r in rows:
        by_fig.setdefault(r["figure"], []).append(r)
    lines = [f"| figure | claims tested ({scale} scale): measured [95% interval], verdict |", "|---|---|"]
    for fig, rs in by_fig.items():
        parts = []
        for r in rs:
            iv = _interval(r)
            value = r["measured"] or ("table not built" if "table missing" in r["note"] else "–")
            seeds = f" ({r['n_seeds']} seed{'' if r['n_seeds'] == '1' else 's'})" if r["n_seeds"] else ""
            parts.append(f"`{r['claim'].split('.', 1)[-1]}` {value}{' ' + iv if iv and iv != 'exact' else ''}"
                         f"{seeds}: **{r['verdict']}**")
        lines.append(f"| {fig} | " + "; ".join(_md(p) for p in parts) + " |")
    return "\n".join(lines) + "\n"


def replace_between_markers(text: str, block: str, path="README.md") -> str:
    """``text`` with everything between README_BEGIN and README_END replaced by ``block``."""
    i, j = text.find(README_BEGIN), text.find(README_END)
    if i < 0 or j < i:
        raise UserError(f"{path}: no '{README_BEGIN}' ... '{README_END}' markers to write the claims table between")
    return text[:i + len(README_BEGIN)] + "\n" + block + text[j:]


#: A generated block of the README: ``<!-- include: PATH [columns=a,b,c] -->`` ... ``<!-- /include -->``.
INCLUDE = re.compile(r"(<!-- include: (?P<path>\S+)(?: columns=(?P<columns>\S+))? -->\n)(?P<body>.*?)(<!-- /include -->)",
                     re.S)


def _cell(value: str) -> str:
    """A CSV cell for a Markdown table: numbers to 4 significant digits, '|' escaped."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return _md(str(value))
    if not math.isfinite(x) or x == int(x) and abs(x) < 1e6 and "." not in str(value):
        return str(value)
    return f"{x:.4g}"


def csv_markdown(path, columns=None) -> str:
    """A tidy CSV table as a Markdown table (``columns``: the ones to show, in that order)."""
    rows = files.read_csv(path, "table")
    cols = list(columns) if columns else (list(rows[0]) if rows else [])
    missing = [c for c in cols if rows and c not in rows[0]]
    if missing:
        raise UserError(f"{path}: no column {', '.join(missing)} (it has {', '.join(rows[0])})")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def fill_includes(text: str, root=".") -> str:
    """``text`` with every include block refilled from its file (relative to ``root``): a Markdown file
    verbatim, a CSV file as a Markdown table; a file not built yet leaves a line saying so. Every
    measured number the README shows outside the claims table comes from such a block."""
    def fill(m):
        path = os.path.join(os.fspath(root), m.group("path"))
        if not os.path.exists(path):
            body = f"*(not built yet: `{m.group('path')}`; `make figures` writes it)*\n"
        elif path.endswith(".csv"):
            body = csv_markdown(path, m.group("columns").split(",") if m.group("columns") else None)
        else:
            body = Path(path).read_text()
        return m.group(1) + body + m.group(5)
    return INCLUDE.sub(fill, text)


# ================================================================ command line


def _ledger_path(args) -> str:
    return os.path.join(args.results, args.scale, "claims.csv")


def _cli_collect(args) -> int:
    options = files.parse_json_object(args.options, "--options") if args.options else {}
    rows = write_ledger(args.results, args.scale, args.out or _ledger_path(args), options)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    print(f"{len(rows)} claims: " + ", ".join(f"{n} {v}" for v, n in counts.items()))
    return 0


def _cli_show(args) -> int:
    path = args.ledger or _ledger_path(args)
    rows = read_ledger(path, args.scale)
    if args.markdown:
        page = claims_page(rows, args.scale)
        files.atomic_write(args.markdown, lambda f: f.write(page.encode()))
    if args.readme:
        try:
            text = Path(args.readme).read_text()
        except FileNotFoundError:
            raise UserError(f"--readme: {args.readme} not found") from None
        new = replace_between_markers(text, readme_table(rows, args.scale), args.readme)
        new = fill_includes(new, os.path.dirname(os.path.abspath(args.readme)))
        if new != text:
            files.atomic_write(args.readme, lambda f: f.write(new.encode()))
    if args.markdown or args.readme:
        return 0
    if args.format == "csv":
        print(Path(path).read_text(), end="")
        return 0
    width = max(len(r["claim"]) for r in rows) if rows else 5
    for r in rows:
        iv = _interval(r)
        seeds = f" n={r['n_seeds']}" if r["n_seeds"] else ""
        print(f"{r['claim']:<{width}}  {r['verdict']:<13}  {r['measured'] or '–':>10} {iv}{seeds}")
        if args.verbose:
            print(f"{'':<{width}}  {r['statement']} Paper: {r['paper_value']}. {r['note']}")
    return 0


def register(subparsers) -> None:
    """Add ``claims-collect`` and ``claims``."""
    p = subparsers.add_parser(
        "claims-collect", description="Compute the claims ledger (results/<scale>/claims.csv) from the tidy "
                                      "tables under results/: every claim of both papers with its measured value, "
                                      "95% interval, seeds and verdict. Missing tables give unresolved rows.")
    p.add_argument("--scale", default="quick", help="the results/<scale>/ to read (default quick)")
    p.add_argument("--results", default="results", help="the results folder (default results)")
    p.add_argument("--out", default=None, help="the ledger to write (default results/<scale>/claims.csv)")
    p.add_argument("--options", default=None, help="JSON object: fig13_epochs (the epochs fig13 reads)")
    p.set_defaults(func=_cli_collect)

    p = subparsers.add_parser(
        "claims", description="Print the claims ledger of a scale (built by the workflow: "
                              "`snakemake --cores 2 results/<scale>/claims.csv`), or write it as Markdown.")
    p.add_argument("--scale", default="quick", choices=("quick", "paper", "paper-smoke"),
                   help="which ledger (default quick)")
    p.add_argument("--results", default="results", help="the results folder (default results)")
    p.add_argument("--ledger", default=None, help="a claims.csv to read instead of results/<scale>/claims.csv")
    p.add_argument("--format", default="text", choices=("text", "csv"), help="how to print it (default text)")
    p.add_argument("-v", "--verbose", action="store_true", help="also print each statement, paper value and note")
    p.add_argument("--markdown", default=None, metavar="MD", help="write the ledger page (docs/claims.md) instead")
    p.add_argument("--readme", default=None, metavar="MD",
                   help="rewrite the table between the claims markers of this README instead")
    p.set_defaults(func=_cli_show)
