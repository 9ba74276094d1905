"""The claims ledger (experiments/claims.py): the paired bootstrap against brute-force enumeration and
closed forms, the decision rules and the sample-size note on constructed tables, the ledger's
columns, its command line and its place in the workflow."""

import csv
import itertools
import math
import subprocess
import sys

import numpy as np
import pytest

from delay_stability.errors import UserError
from delay_stability.experiments import claims as C
from delay_stability.experiments import generalization
from delay_stability.experiments import momentum_tables as momentum
from delay_stability.experiments import theory as theory_exp
from delay_stability import files
from workflow_util import SNAKEMAKE, copy_workflow, snakemake


# ================================================================ statistics


def test_percentile_interval_takes_the_order_statistics():
    stats = np.arange(1000, dtype=float)[::-1]                 # 0..999 in any order
    assert C.percentile_interval(stats) == (25.0, 974.0)      # ⌊1000·0.025⌋ and ⌈1000·0.975⌉ − 1
    assert C.percentile_interval([math.inf] * 30 + [1.0] * 970) == (1.0, math.inf)   # infinities stay defined


def test_resamples_are_deterministic_and_uniform():
    a, b = C.resample_indices(5), C.resample_indices(5)
    assert np.array_equal(a, b) and a.shape == (C.N_RESAMPLES, 5)
    counts = np.bincount(a.ravel(), minlength=5) / a.size
    assert np.allclose(counts, 0.2, atol=0.01)


def test_bootstrap_of_few_seeds_spans_the_observed_extremes():
    """n = 3: the smallest and largest resampled means (a seed drawn three times) each have
    probability 1/27 > 2.5%, so the 95% percentile interval is exactly [min, max]."""
    d = np.array([[0.3], [1.7], [-0.4]])
    est, lo, hi = C.bootstrap_means(d, lambda m: m[:, 0])
    assert est == pytest.approx(d.mean())
    assert (lo, hi) == pytest.approx((-0.4, 1.7), abs=1e-15)


def test_bootstrap_matches_brute_force_enumeration():
    """n = 5: every one of the 5^5 resamples enumerated; the bootstrap's interval lies between the
    exact distribution's 1.5% and 3.5% quantiles (and 96.5%, 98.5%)."""
    x = np.array([[0.1], [2.0], [-1.3], [0.7], [4.2]])
    exact = np.sort([x[list(idx), 0].mean() for idx in itertools.product(range(5), repeat=5)])
    q = lambda p: exact[int(p * len(exact))]
    _, lo, hi = C.bootstrap_means(x, lambda m: m[:, 0])
    assert q(0.015) <= lo <= q(0.035)
    assert q(0.965) <= hi <= q(0.985)


def test_bootstrap_interval_of_a_mean_is_the_normal_one_for_many_seeds():
    """Closed form: the bootstrap distribution of a mean has variance σ̂²/n (σ̂ with ddof = 0), so for
    n = 400 the 95% interval is mean ± 1.96·σ̂/√n to a few percent."""
    x = np.random.default_rng(1).normal(3.0, 2.0, size=(400, 1))
    est, lo, hi = C.bootstrap_means(x, lambda m: m[:, 0])
    half = 1.959964 * x[:, 0].std() / math.sqrt(400)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.06)
    assert (lo + hi) / 2 == pytest.approx(est, abs=0.1 * half)


def test_few_seeds_get_students_t_on_the_paired_differences():
    """n = 3 < T_BELOW, a difference of means (linear): the interval is the closed form
    mean(d) ± t_{2, 0.975}·sd(d)/√3 with t_{2, 0.975} = 4.302653 and d the per-seed differences,
    wider than the bootstrap's [min, max] of d."""
    x = np.array([[1.3, 0.2], [2.9, 0.4], [0.8, 0.9]])
    d = x[:, 0] - x[:, 1]
    ci = C.paired_interval(x, lambda m: m[:, 0] - m[:, 1])
    half = 4.302653 * d.std(ddof=1) / math.sqrt(3)
    assert ci.method == "t"
    assert (ci.estimate, ci.low, ci.high) == pytest.approx((d.mean(), d.mean() - half, d.mean() + half), rel=1e-6)
    assert ci.low < d.min() and ci.high > d.max()


def test_a_nonlinear_statistic_or_enough_seeds_keep_the_bootstrap():
    x3 = np.array([[1.3, 0.2, 0.5], [2.9, 0.4, 0.1], [0.8, 0.9, 0.7]])
    worst = lambda m: np.min(m[:, 1:] - m[:, [0]], axis=1)   # a minimum over arms: not linear in the means
    assert not C.linear_in_means(x3, worst)
    assert C.linear_in_means(x3, lambda m: 100 * (m[:, 0] - 2 * m[:, 2]) + 1.0)
    ci = C.paired_interval(x3, worst)
    assert ci.method == "bootstrap" and (ci.estimate, ci.low, ci.high) == C.bootstrap_means(x3, worst)
    x5 = np.random.default_rng(2).normal(size=(C.T_BELOW, 2))
    ci = C.paired_interval(x5, lambda m: m[:, 0] - m[:, 1])
    assert ci.method == "bootstrap" and (ci.estimate, ci.low, ci.high) == C.bootstrap_means(x5, lambda m: m[:, 0] - m[:, 1])
    one = C.paired_interval(x3[:1], lambda m: m[:, 0])   # one seed: no spread, no interval
    assert one.low == one.high == one.estimate == 1.3


def test_the_note_says_which_interval_was_used():
    rule = C.Rule("greater", threshold=0.0)
    t = C.Result(1.0, 0.5, 1.5, 3, method="t")
    b = C.Result(1.0, 0.5, 1.5, 3)
    assert "Student t interval over 3 seeds" in C.verdict_and_note(t, rule)[1]
    note = C.verdict_and_note(b, rule)[1]
    assert "paired bootstrap over 3 seeds" in note and "optimistic" in note
    assert "optimistic" not in C.verdict_and_note(C.Result(1.0, 0.5, 1.5, 8), rule)[1]


def test_the_seeds_a_t_interval_needs_discount_t_s_own_widening():
    """n = 3, half-width 4.302653·s/√3 at distance s/√3·1.959964: at the observed spread the normal
    half-width 1.96·s/√n* reaches the distance at n* = 3 + 1 (the bootstrap's formula would ask
    3·(4.302653/1.959964)² ≈ 14.5 -> 15)."""
    s3 = 1 / math.sqrt(3)
    half, dist = 4.302653 * s3, 1.959964 * s3 * 0.999
    rule = C.Rule("greater", threshold=0.0)
    assert C.seeds_needed(3, dist, dist - half, dist + half, rule, "t") == 4
    assert C.seeds_needed(3, dist, dist - half, dist + half, rule) == 15


def test_an_interval_is_cut_at_the_statistics_range_and_says_so():
    """Spike counts 0, 0, 2 over 3 seeds: the t interval of their mean, 2/3 ± 4.302653·1.1547/√3,
    reaches below 0, which a mean of counts cannot; cut at [0, inf) it starts at 0 (the true mean
    lies there, so the coverage is the same), keeps its upper end, and the note gives both."""
    x = np.array([[0.0], [0.0], [2.0]])
    uncut = C.paired_interval(x, lambda m: m[:, 0])
    half = 4.302653 * np.std([0, 0, 2], ddof=1) / math.sqrt(3)
    assert (uncut.low, uncut.high) == pytest.approx((2 / 3 - half, 2 / 3 + half), rel=1e-6) and uncut.cut is None
    ci = C.paired_interval(x, lambda m: m[:, 0], bounds=(0.0, math.inf))
    assert (ci.estimate, ci.low, ci.high, ci.method) == (uncut.estimate, 0.0, uncut.high, "t")
    assert ci.cut == (0.0, math.inf, uncut.low, uncut.high)
    inside = C.paired_interval(x + 5, lambda m: m[:, 0], bounds=(0.0, math.inf))
    assert inside.cut is None and inside.low > 0   # nothing to cut: nothing said
    res = C.seeded(ci, 3)
    verdict, note = C.verdict_and_note(res, C.Rule("less", threshold=1e-9))
    assert verdict == "unresolved" and "cut at the statistic's range [0, inf]" in note
    # the seeds needed come from the uncut spread (the cut half-width would understate it)
    need = C.seeds_needed(3, uncut.estimate, uncut.low, uncut.high, C.Rule("less", threshold=1e-9), "t")
    assert f"about {need} seeds" in note


def test_a_difference_of_accuracies_stays_within_100_points():
    """Table 1's SB − ASGD in points: per-arm values in [0, 100], so the difference lies in
    [−100, 100]; an interval past 100 is cut there."""
    rows = [{"arm": a, "seed": s, "val_accuracy": v} for s, (sb, asgd) in enumerate([(99.0, 10.0), (98.0, 10.0), (97.0, 60.0)])
            for a, v in (("SB", sb), ("ASGD", asgd))]
    free = C.mean_difference(rows, "arm", "val_accuracy", "SB", "ASGD")
    cut = C.mean_difference(rows, "arm", "val_accuracy", "SB", "ASGD", value_range=(0.0, 100.0))
    assert free.ci_high > 100 and cut.ci_high == 100.0 and cut.ci_low == free.ci_low and cut.measured == free.measured
    assert cut.cut == (-100.0, 100.0, free.ci_low, free.ci_high)


def test_the_bootstrap_is_paired_by_seed():
    """Two arms with a large spread between seeds but a constant difference: the paired interval
    of the difference is that constant exactly (an unpaired one would be wide)."""
    base = np.array([10.0, 50.0, 30.0, 80.0, 20.0])
    x = np.stack([base + 1.5, base], axis=1)
    est, lo, hi = C.bootstrap_means(x, lambda m: m[:, 0] - m[:, 1])
    assert est == lo == hi == pytest.approx(1.5)


def test_bootstrap_seeds_resamples_a_statistic_of_the_seed_multiset():
    est, lo, hi = C.bootstrap_seeds(["a", "b", "c"], lambda ss: float(ss.count("a")))
    assert est == 1.0 and lo == 0.0 and hi == 3.0            # n = 3: extremes have probability 1/27


# ================================================================ decisions and the sample-size note


@pytest.mark.parametrize("lo, hi, rule, verdict", [
    (0.1, 0.5, C.Rule("greater", 0.0), "holds"),
    (-0.5, -0.1, C.Rule("greater", 0.0), "does not hold"),
    (-0.5, 0.0, C.Rule("greater", 0.0), "does not hold"),     # at the threshold: not above it
    (-0.1, 0.5, C.Rule("greater", 0.0), "unresolved"),
    (-0.5, -0.1, C.Rule("less", 0.0), "holds"),
    (0.0, 0.0, C.Rule("less", 0.0), "does not hold"),
    (-0.1, 0.5, C.Rule("less", 0.0), "unresolved"),
    (-0.5, 0.5, C.Rule("within", low=-1, high=1), "holds"),
    (1.2, 3.0, C.Rule("within", low=-1, high=1), "does not hold"),
    (0.5, 3.0, C.Rule("within", low=-1, high=1), "unresolved"),
    (1.0, 1.0, C.Rule("within", low=1, high=1), "holds"),
    (0.6, 1.0, C.Rule("within", low=1, high=1), "unresolved"),
    (0.2, 0.6, C.Rule("within", low=1, high=1), "does not hold"),
])
def test_decide(lo, hi, rule, verdict):
    assert C.decide(lo, hi, rule) == verdict


def test_seeds_needed_closed_form():
    """Half-width 1 at n = 3, distance 0.5 to the threshold: n* = ⌈3·(1/0.5)²⌉ = 12, and at n* the
    half-width 1·√(3/12) = 0.5 no longer reaches over the threshold."""
    assert C.seeds_needed(3, 1.0, 0.0, 2.0, C.Rule("greater", 0.5)) == 12
    assert C.seeds_needed(3, 1.0, 0.0, 2.0, C.Rule("within", low=0.8, high=5.0)) == 75   # nearest: 0.8
    assert C.seeds_needed(3, 0.5, 0.0, 1.0, C.Rule("greater", 0.5)) is None               # on the threshold


def test_one_seed_is_unresolved_and_says_so():
    verdict, note = C.verdict_and_note(C.Result(5.0, 5.0, 5.0, 1), C.Rule("greater", 0.0))
    assert verdict == "unresolved" and "one seed" in note


def test_an_unresolved_claim_says_how_many_seeds_would_resolve_it():
    verdict, note = C.verdict_and_note(C.Result(1.0, -1.0, 3.0, 4), C.Rule("greater", 0.0))
    assert verdict == "unresolved"
    assert "about 16 seeds would resolve it" in note                     # ⌈4·(2/1)²⌉
    assert f"{C.N_RESAMPLES} resamples" in note


def test_exact_and_deterministic_results_have_no_seed_note():
    v, note = C.verdict_and_note(C.exact(1e-12), C.Rule("less", C.EXACT_TOL))
    assert v == "holds" and "bootstrap" not in note
    v, note = C.verdict_and_note(C.deterministic(1.02, 0.97, 1.12, "bracket"), C.Rule("within", low=0.9, high=1.1))
    assert v == "unresolved" and "resolution" in note


# ================================================================ claims on constructed tables


def fig5_rows(effect, noise, seeds=5, rng=0):
    """fig5.csv rows: m = 0 at 2% ± noise per seed, standard momentum ``effect`` points above it (paired)."""
    g = np.random.default_rng(rng)
    rows = []
    for s in range(seeds):
        base = 0.02 + 0.005 * g.standard_normal()
        arms = {"S-SGD": base - 0.005, "m = 0": base, "shifted momentum": base + 0.001,
                "standard momentum": base + effect / 100 + noise / 100 * g.standard_normal(),
                "1/sqrt(tau)": 0.9}
        for arm, err in arms.items():
            rows.append({"variant": arm, "seed": str(s), "final_val_error": repr(err), "final_train_error": repr(err),
                         "status": "diverged" if arm == "1/sqrt(tau)" else "completed",
                         "lr": {"S-SGD": "0.8", "1/sqrt(tau)": "0.283"}.get(arm, "0.1"),
                         "tau": "0" if arm == "S-SGD" else "8"})
    return rows


def claim(name, tables):
    return next(c for c in C.all_claims(tables) if c.claim == name)


@pytest.mark.parametrize("effect, noise, verdict", [(1.0, 0.1, "holds"), (-1.0, 0.1, "does not hold"),
                                                    (0.1, 2.0, "unresolved")])
def test_a_paired_claim_holds_fails_or_is_unresolved(effect, noise, verdict):
    tables = {"fig5": fig5_rows(effect, noise)}
    row = C.evaluate(claim("fig5.momentum_hurts", tables), tables, {})
    assert row["verdict"] == verdict, row
    assert row["n_seeds"] == "5"
    x, _ = C.per_seed(tables["fig5"], "variant", "final_val_error", ["standard momentum", "m = 0"])
    assert float(row["measured"]) == pytest.approx(100 * (x[:, 0] - x[:, 1]).mean(), rel=1e-5)
    assert float(row["ci_low"]) <= float(row["measured"]) <= float(row["ci_high"])
    if verdict == "unresolved":
        assert "seeds would resolve it" in row["note"]


def test_the_sqrt_arm_claims():
    tables = {"fig5": fig5_rows(1.0, 0.1)}
    fails = C.evaluate(claim("fig5.sqrt_fails", tables), tables, {})
    assert fails["verdict"] == "holds" and fails["measured"] == "1"
    over = C.evaluate(claim("fig5.sqrt_overshoot", tables), tables, {})
    # η(1/√τ) / (η_S · α*(8)/α*(0)) = 0.283 / (0.8 · sin(π/34)) = 3.83: not the paper's 7.3
    assert float(over["measured"]) == pytest.approx(0.283 / (0.8 * math.sin(math.pi / 34)), rel=1e-5)
    assert over["verdict"] == "does not hold"


def test_missing_tables_give_unresolved_rows_that_name_them(tmp_path):
    rows = C.write_ledger(tmp_path, "quick", tmp_path / "claims.csv")
    assert rows and all(r["verdict"] == "unresolved" and "table missing" in r["note"] for r in rows)
    with open(tmp_path / "claims.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == C.COLUMNS
        assert {r["verdict"] for r in reader} <= set(C.VERDICTS)
    figures = {r["figure"] for r in rows}
    for fig in ("fig1", "fig2", "fig3", "fig4 (left)", "fig4 (right)", "fig5", "fig9", "fig11", "fig12", "fig13",
                "table1", "p2 fig6", "p2 fig7", "p2 fig8", "p2 fig4", "delayed_eos", "mitigations",
                "real_staleness"):
        assert fig in figures, fig
    assert len({r["claim"] for r in rows}) == len(rows)


def test_exact_claims_from_the_theory_tables(tmp_path):
    (tmp_path / "theory").mkdir()
    files.write_csv(tmp_path / "theory" / "fig6.csv", list(theory_exp.fig6_table(8)[0]), theory_exp.fig6_table(8))
    rows = {r["claim"]: r for r in C.ledger(tmp_path, "quick")}
    assert rows["fig6.closed_form"]["verdict"] == "holds"
    assert float(rows["fig6.closed_form"]["measured"]) < 1e-12
    assert rows["fig6.closed_form"]["n_seeds"] == ""


def momentum_runs(seeds=4):
    """runs.csv of a 3-worker-count grid where the best μ falls with M (with noise per seed)."""
    g = np.random.default_rng(3)
    rows = []
    for M in (1, 4, 16):
        for mu in (-0.45, 0.0, 0.45, 0.9):
            for lr in (0.05, 0.1):
                for s in range(seeds):
                    best = {1: 0.45, 4: 0.0, 16: -0.45}[M]
                    steps = 100 * M ** 0.5 * (1 + 2 * abs(mu - best)) * (1 + abs(lr - 0.1) * 3) + 8 * g.standard_normal()
                    reached = not (M == 16 and mu == 0.9)
                    rows.append({"workers": str(M), "momentum": repr(mu), "lr": repr(lr), "seed": str(s),
                                 "status": "completed", "reached": str(reached),
                                 "steps_to_target": repr(steps) if reached else ""})
    return rows


def test_the_momentum_bootstrap_agrees_with_the_momentum_tables():
    """The vectorised tuned-μ of the ledger equals momentum.score_rows/tuned_rows/best_rows on the
    full sample."""
    rows = momentum_runs()
    typed = [{"workers": int(r["workers"]), "momentum": float(r["momentum"]), "lr": float(r["lr"]),
              "seed": int(r["seed"]), "reached": r["reached"] == "True",
              "steps_to_target": float(r["steps_to_target"]) if r["steps_to_target"] else None} for r in rows]
    best = momentum.best_rows(momentum.tuned_rows(momentum.score_rows(typed)))
    want = {b["workers"]: b["best_momentum"] for b in best if b["negatives"]}
    tables = {"momentum_runs": rows}
    neg = C.evaluate(claim("p2.fig8.negative", tables), tables, {})
    assert float(neg["measured"]) == want[16] == -0.45
    falls = C.evaluate(claim("p2.fig8.best_falls", tables), tables, {})
    assert float(falls["measured"]) == pytest.approx(want[1] - want[16])
    assert falls["verdict"] == "holds"
    fixed = C.evaluate(claim("p2.fig4.fixed_momentum", tables), tables, {})
    assert fixed["measured"] == "inf" and fixed["verdict"] == "holds"      # μ = 0.9 never reached at M = 16


def test_the_fig3_claims_use_the_generalization_tables():
    g = np.random.default_rng(5)
    rows = []
    for tau in (0, 2, 4, 8):
        div = 1.6 / (tau + 1)
        for lr in (0.05, 0.1, 0.2, 0.5, 1.0, 2.0):
            for s in range(3):
                failed = lr >= div
                err = 0.9 if failed else 0.03 + 0.02 * abs(math.log(lr / (div / 2))) + 0.002 * g.standard_normal()
                rows.append({"tau": str(tau), "lr": repr(lr), "seed": str(s), "val_error": repr(err),
                             "failed": str(failed)})
    tables = {"fig3": rows}
    typed = C._fig3_rows(tables)
    table, fit = generalization.claims(typed)
    lin = C.evaluate(claim("fig3.linear_threshold", tables), tables, {})
    assert float(lin["measured"]) == pytest.approx(fit["r2"], rel=1e-5)
    below = C.evaluate(claim("fig3.best_below_threshold", tables), tables, {})
    assert below["verdict"] == "holds" and below["measured"] == "1"


# ================================================================ command line and workflow


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "delay_stability.cli", *args], capture_output=True, text=True,
                          cwd=cwd)


def test_the_cli_names_the_command_that_builds_a_missing_ledger(tmp_path):
    r = cli("claims", "--scale", "paper", "--results", str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no claims ledger for scale 'paper'" in r.stderr
    assert f"snakemake --cores 2 {tmp_path}/paper/claims.csv --config scale=paper" in r.stderr


def test_the_cli_builds_prints_and_renders_the_ledger(tmp_path):
    r = cli("claims-collect", "--results", str(tmp_path), "--scale", "quick")
    assert r.returncode == 0, r.stderr
    r = cli("claims", "--results", str(tmp_path))
    assert r.returncode == 0 and "fig5.momentum_hurts" in r.stdout and "unresolved" in r.stdout
    probe = subprocess.run([sys.executable, "-c", "import sys; from delay_stability import cli; "
                            f"cli.main(['claims', '--results', {str(tmp_path)!r}]); print('torch' in sys.modules)"],
                           capture_output=True, text=True)
    assert probe.stdout.splitlines()[-1] == "False", probe.stderr   # the ledger answers without torch
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{C.README_BEGIN}\nold table\n{C.README_END}\noutro\n")
    r = cli("claims", "--results", str(tmp_path), "--readme", str(readme), "--markdown", str(tmp_path / "c.md"))
    assert r.returncode == 0, r.stderr
    text = readme.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith(f"{C.README_END}\noutro\n")
    assert "| fig5 |" in text and "**unresolved**" in text
    assert "## How each claim is tested" in (tmp_path / "c.md").read_text()
    readme.write_text("no markers\n")
    r = cli("claims", "--results", str(tmp_path), "--readme", str(readme))
    assert r.returncode == 2 and "markers" in r.stderr and "Traceback" not in r.stderr


def test_the_ledger_module_imports_no_torch():
    r = subprocess.run([sys.executable, "-c", "import sys, delay_stability.experiments.claims; "
                                              "print('torch' in sys.modules)"], capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr


@pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake is not installed")
def test_the_workflow_plans_the_ledger_from_the_tables(tmp_path):
    workdir = copy_workflow(tmp_path)
    result = snakemake(workdir, "-n", "--forceall", "results/quick/claims.csv", "docs/claims.md")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "rule claims:" in out and "rule claims_page:" in out     # (local)rule
    block = out[out.index("rule claims:"):].split("\n\n")[0]
    for table in ("results/theory/fig6.csv", "results/quick/imagenet/fig5.csv", "results/quick/spikes/spikes.csv",
                  "results/quick/generalization/table1_runs.csv", "results/quick/momentum/runs.csv"):
        assert table in block, table


def test_the_budget_note_counts_runs_that_hit_the_epoch_cap():
    rows = [{"status": "completed", "epochs": "30", "epochs_run": "30"},
            {"status": "completed", "epochs": "30", "epochs_run": "12"},     # stopped early (steady state)
            {"status": "diverged", "epochs": "30", "epochs_run": "3"}]
    assert C.budget_note(rows) == "1 of 2 converging runs ran to the epoch cap (30 epochs; no steady-state stop)"


def test_the_budget_note_of_a_per_epoch_table_counts_each_run_once():
    """fig1.csv has a row per run and evaluation epoch: a run counts once, by its last row; a
    completed run ran to its cap, a steady-state stop did not, a diverged run is left out."""
    rows = [{"run": "a", "epoch": e, "status": "completed"} for e in ("0", "30", "60")]
    rows += [{"run": "b", "epoch": e, "status": "steady"} for e in ("0", "20")]
    rows += [{"run": "c", "epoch": e, "status": "diverged"} for e in ("0", "5")]
    assert C.budget_note_epochs(rows) == "1 of 2 converging runs ran to the epoch cap (60 epochs; no steady-state stop)"


def test_fig1_and_fig13_claims_say_how_many_runs_hit_the_cap():
    rows = [{"tau": str(tau), "lr": str(lr), "seed": "0", "epoch": str(e), "val_error": str(0.1 + lr),
             "train_error": "0.05", "status": "completed", "run": f"tau{tau}/lr{lr}"}
            for tau in (0, 8) for lr in (0.01, 0.1) for e in (0, 10, 20)]
    tables = {"fig1": rows}
    for name in ("fig1.gap", "fig1.eq8", "fig13.best_lr_stays"):
        r = C.evaluate(claim(name, tables), tables, {})
        assert "4 of 4 converging runs ran to the epoch cap (20 epochs; no steady-state stop)" in r["note"], (name, r["note"])


def test_the_grid_offset_claim_finds_a_best_momentum_that_moves_with_the_grid():
    """At M = 16 the best μ is −0.45 at the middle η and 0.45 at the others only on the first
    offset's grid: the coarse grids disagree, so the range is 0.9 for every resample."""
    rows = []
    lrs = [0.01 * 1.5 ** k for k in range(6)]
    for M in (1, 16):
        for mu in (-0.45, 0.45):
            for i, lr in enumerate(lrs):
                for s in range(3):
                    good = (mu == -0.45 and i == 1) or (mu == 0.45 and i == 3)
                    steps = (50.0 if good and mu < 0 else 60.0 if good else 200.0) + s
                    rows.append({"workers": str(M), "momentum": repr(mu), "lr": repr(lr), "seed": str(s),
                                 "reached": "True", "steps_to_target": repr(steps)})
    tables = {"momentum_runs": rows}
    r = C.evaluate(claim("p2.grid_offset", tables), tables, {})
    # offsets: {η0, η3} -> 0.45, {η1, η4} -> −0.45, {η2, η5} -> none better than 200: tie, the larger μ
    assert float(r["measured"]) == pytest.approx(0.9) and r["verdict"] == "does not hold"


def test_the_decade_grid_claims_read_each_offset_of_the_papers_protocol():
    """Decade grids {1, .1} and {.3162, .03162}: at M = 16 μ = 0.45 is best at η = 0.1 and μ = −0.45
    at η = 0.3162, so the paper's grid (through the largest η) picks 0.45 and the shifted one −0.45."""
    rows = []
    for M in (1, 16):
        for mu in (-0.45, 0.45):
            for lr in (1.0, 0.3162, 0.1, 0.03162):
                for s in range(3):
                    good = M == 16 and ((mu == 0.45 and lr == 0.1) or (mu == -0.45 and lr == 0.3162))
                    steps = (50.0 if good and mu < 0 else 60.0 if good else 200.0) + s
                    rows.append({"workers": str(M), "momentum": repr(mu), "lr": repr(lr), "seed": str(s),
                                 "reached": "True", "steps_to_target": repr(steps)})
    tables = {"momentum_decade_runs": rows}
    neg = C.evaluate(claim("p2.decade.negative", tables), tables, {})
    assert float(neg["measured"]) == 0.45 and neg["verdict"] == "does not hold" and neg["n_seeds"] == "3"
    off = C.evaluate(claim("p2.decade.offset", tables), tables, {})
    assert float(off["measured"]) == pytest.approx(0.9) and off["verdict"] == "does not hold"
    assert "1: +0.45, 0.316: -0.45" in off["note"]
    one = [r for r in rows if float(r["lr"]) in (1.0, 0.1)]                 # one offset: no spread to measure
    assert C.evaluate(claim("p2.decade.offset", {"momentum_decade_runs": one}), {"momentum_decade_runs": one},
                      {})["verdict"] == "unresolved"


def test_the_deterministic_claims_read_the_real_columns():
    """Constructed tables with the columns their modules write (stability_tables, eos_tables,
    mitigations_tables, real_workers): every claim evaluates (no 'cannot evaluate') to the verdict
    the numbers call for."""
    from delay_stability.experiments import eos_tables, mitigations_tables, stability_tables
    from delay_stability.experiments import real_workers_tables as real_workers

    def table(columns, rows):
        return [{c: str(r.get(c, "")) for c in columns} for r in rows]

    thresholds = []
    for variant, m in (("plain", 0.0), ("shifted", 0.5), ("shifted", 0.9)):
        for tau in (0, 1, 4):
            th = 2 * math.sin(math.pi / (4 * tau + 2)) * (1 + m)   # any increasing-in-m edge will do
            thresholds.append({"experiment": "stability", "variant": variant, "momentum": m, "tau": tau,
                               "alpha_measured": 0.99 * th, "alpha_escape": 1.01 * th, "alpha_theory": th,
                               "ratio": 0.99, "lr_max": 0.99 * th / 50, "lr_escape": 1.01 * th / 50})
    curves = [{"tau": 1, "lr_factor": f, "status": "completed", "epoch": e, "train_loss": 1e-6 * (g ** e)}
              for f, g in ((0.9, 0.5), (1.5, 3.0)) for e in range(4)]
    plateaus = [{"series": "scaled", "ratio": 1.02, "plateau_q10": 26.5, "plateau_q90": 28.0, "predicted": 27.0},
                {"series": "fixed", "ratio": 1.5, "plateau_q10": 1, "plateau_q90": 2, "predicted": 1}]
    edges = [{"exact": True, "censored": False, "ratio": 0.97}, {"exact": True, "censored": True, "ratio": 5},
             {"exact": False, "censored": False, "ratio": 0.5}]
    outcomes = [{"workers": 2, "jitter": j, "factor": f, "repeat": k, "outcome": out}
                for j, f, out in ((0.0, 0.7, "stayed"), (0.0, 1.4, "left"), (0.02, 0.7, "left"), (0.02, 1.4, "left"))
                for k in range(3)]
    tables = {"fig2_thresholds": table(stability_tables.THRESHOLD_COLUMNS, thresholds),
              "fig4_thresholds": table(stability_tables.THRESHOLD_COLUMNS, thresholds),
              "fig2_fits": table(stability_tables.FIT_COLUMNS, stability_tables.fit_rows(
                  [dict(r, lr_max=r["lr_max"]) for r in thresholds])),
              "fig12_curves": table(stability_tables.CURVE_COLUMNS, curves),
              "eos_plateaus": table(eos_tables.PLATEAU_COLUMNS, plateaus),
              "mitigation_edges": table(mitigations_tables.EDGE_COLUMNS, edges),
              "real_outcomes": table(real_workers.OUTCOME_COLUMNS, outcomes)}
    want = {"fig2.edge": "holds", "fig4.shifted_measured": "holds", "fig4.shifted_grows": "holds",
            "fig12.stay_leave": "holds", "eos.plateau": "holds", "mitigations.edges": "holds",
            "real_workers.leave_above": "holds", "real_workers.stay_below.no_jitter": "holds",
            "real_workers.stay_below.jitter": "does not hold"}
    for name, verdict in want.items():
        row = C.evaluate(claim(name, tables), tables, {})
        assert "cannot evaluate" not in row["note"] and row["verdict"] == verdict, row
    assert float(C.evaluate(claim("mitigations.edges", tables), tables, {})["measured"]) == 0.97  # censored left out


def test_the_random_staleness_claims_compare_measured_and_predicted_edges():
    """Measured/predicted per model from edges.csv (paired over seeds) and summary.csv: the worst
    model decides; eq. 19's claim reads only the broad laws (uniform workers, M >= 4)."""
    summary = [
        {"model": "u4", "kind": "workers", "workers": "4", "landing": "uniform", "measured": "True",
         "alpha_mean_edge": "14", "alpha_mean_square_edge": "0.8", "alpha_almost_sure_edge": "1.0"},
        {"model": "u2", "kind": "workers", "workers": "2", "landing": "uniform", "measured": "True",
         "alpha_mean_edge": "6", "alpha_mean_square_edge": "1.2", "alpha_almost_sure_edge": "1.5"},
        {"model": "g", "kind": "workers", "workers": "4", "landing": "gaussian", "measured": "False",
         "alpha_mean_edge": "1", "alpha_mean_square_edge": "1", "alpha_almost_sure_edge": "1"},
    ]
    edges = [{"model": m, "seed": str(s), "alpha_measured": str(v)}
             for m, vals in (("u4", (0.9, 0.9, 0.9)), ("u2", (1.4, 1.4, 1.4))) for s, v in enumerate(vals)]
    tables = {"rs_summary": summary, "rs_edges": edges}
    rows = {c.claim: C.evaluate(c, tables, {}, "quick") for c in C.all_claims(tables)
            if c.claim.startswith("random_staleness")}
    ms = rows["random_staleness.mean_square_safe"]
    assert float(ms["measured"]) == pytest.approx(min(0.9 / 0.8, 1.4 / 1.2), rel=1e-5) and ms["verdict"] == "holds"
    a_s = rows["random_staleness.almost_sure_bound"]
    assert float(a_s["measured"]) == pytest.approx(max(0.9 / 1.0, 1.4 / 1.5), rel=1e-5) and a_s["verdict"] == "holds"
    eq19 = rows["random_staleness.eq19_optimistic"]
    assert float(eq19["measured"]) == pytest.approx(14 / 0.9, rel=1e-5) and "1 models" in eq19["note"]
    assert eq19["verdict"] == "holds" and eq19["n_seeds"] == "3"
    # a measured edge far below the mean-square edge: the claim does not hold
    tables["rs_edges"] = [dict(e, alpha_measured="0.4") if e["model"] == "u4" else e for e in edges]
    row = next(C.evaluate(c, tables, {}, "quick") for c in C.all_claims(tables)
               if c.claim == "random_staleness.mean_square_safe")
    assert row["verdict"] == "does not hold" and "the worst is u4" in row["note"]


def test_readme_include_blocks_are_refilled_from_the_built_tables(tmp_path):
    """Every measured number the README shows comes from a file: a Markdown table verbatim, a CSV
    table rendered (chosen columns, 4 significant digits), a table not built yet says so."""
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "t.md").write_text("| a |\n|---|\n| 1 |\n")
    (tmp_path / "r" / "t.csv").write_text("arm,seed,err,status\nx,0,0.123456789,completed\ny,1,2,diverged\n")
    text = ("intro\n<!-- include: r/t.md -->\nstale\n<!-- /include -->\nmid\n"
            "<!-- include: r/t.csv columns=arm,err -->\nold | numbers\n<!-- /include -->\n"
            "<!-- include: r/none.csv -->\n<!-- /include -->\nend\n")
    out = C.fill_includes(text, tmp_path)
    assert "stale" not in out and "old | numbers" not in out
    assert "<!-- include: r/t.md -->\n| a |\n|---|\n| 1 |\n<!-- /include -->" in out
    assert "| arm | err |\n|---|---|\n| x | 0.1235 |\n| y | 2 |\n" in out
    assert "not built yet: `r/none.csv`" in out and out.startswith("intro\n") and out.endswith("end\n")
    assert C.fill_includes(out, tmp_path) == out  # idempotent
    with pytest.raises(UserError, match="no column nope"):
        C.fill_includes("<!-- include: r/t.csv columns=nope -->\n<!-- /include -->", tmp_path)
