"""Asynchrony begets Momentum (Mitliagkas et al. 2016): the theory (Theorems 3, 6, 7) against the
explicit expected recurrence, dense linear algebra, closed forms and Monte-Carlo averages of
DelayedSGD with the random schedule; the edge of momentum under geometric staleness; and the
momentum experiment's pieces and workflow on a tiny config."""

import math

import numpy as np
import pytest

from delay_stability import theory
from oracles import dense_momentum_rate, expected_geometric_staleness_iterates


def _quadratic(n=3, seed=0, low=0.5, high=2.0):
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.linspace(low, high, n)
    return basis @ np.diag(lam) @ basis.T, lam, rng.standard_normal(n), rng.standard_normal(n)


# ---------------------------------------------------------------- Theorem 6: the expected recurrence


@pytest.mark.parametrize("q,m", [(0.0, 0.0), (0.5, 0.0), (0.75, 0.5), (0.875, -0.45), (0.3, 0.9)])
def test_theorem6_recurrence_equals_the_explicit_expectation_over_the_staleness_law(q, m):
    H, _, w0, w_star = _quadratic()
    alpha = 0.3
    mine = theory.expected_momentum_iterates(H, w0, w_star, alpha, q, m, 40)
    ref = expected_geometric_staleness_iterates(H, w0, w_star, alpha, q, m, 40)
    np.testing.assert_allclose(mine, ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("q,m,alpha", [(0.0, 0.0, 0.5), (0.5, 0.3, 0.4), (0.8, -0.6, 1.1), (0.9, 0.7, 0.05),
                                       (0.6, -0.3, 3.0)])
def test_theorem7_rate_is_the_spectral_radius_of_the_dense_recurrence(q, m, alpha):
    H, lam, _, _ = _quadratic(n=4, seed=1)
    assert theory.momentum_rate(lam, alpha, q, m) == pytest.approx(dense_momentum_rate(H, alpha, q, m), rel=1e-9)


def test_theorem7_rate_is_the_decay_of_the_expected_iterates():
    H, lam, w0, w_star = _quadratic(n=3, seed=2)
    q, m, alpha = 0.6, -0.2, 0.1
    e = np.linalg.norm(theory.expected_momentum_iterates(H, w0, w_star, alpha, q, m, 300) - w_star, axis=1)
    gamma = theory.momentum_rate(lam, alpha, q, m)
    assert gamma < 0.99 and (e[300] / e[200]) ** (1 / 100) == pytest.approx(gamma, rel=2e-3)


def test_theorem7_cubic_is_the_reversed_growth_polynomial_g():
    lam, alpha, q, m = np.array([1.0, 3.0]), 0.2, 0.4, -0.3
    cubics = theory.momentum_rate_cubics(lam, alpha, q, m)
    for row, l in zip(cubics, lam):
        z = 1 + q + m - alpha * (1 - q) * l
        g = [q * m, -(q + m + q * m), z, -1.0]  # eq. 10, descending powers of t
        t_star = min(np.roots(g), key=abs)
        assert 1 / abs(t_star) == pytest.approx(np.abs(np.roots(row)).max(), rel=1e-10)


def test_no_staleness_and_no_momentum_is_gradient_descent():
    lam = theory.quadratic_spectrum(5, 40)
    for alpha in (0.1, 0.3, 0.45):
        assert theory.momentum_rate(lam, alpha, 0.0, 0.0) == pytest.approx(max(abs(1 - alpha * lam)), rel=1e-9)


# ---------------------------------------------------------------- Monte Carlo: Theorem 3/5 on DelayedSGD


@pytest.mark.parametrize("workers,m", [(4, 0.0), (4, -0.45), (8, 0.5)])
def test_delayed_sgd_random_schedule_averages_to_theorem6(workers, m):
    """Full-batch gradients on a quadratic, only the landing worker random: the mean of w_t over
    1,000 schedule seeds is Theorem 6's E w_t with μ_S = 1 − 1/M and α = η(1 − m) (dampening), to
    5 standard errors per coordinate."""
    torch = pytest.importorskip("torch")
    from delay_stability.asgd import DelayedSGD

    H, _, w0, w_star = _quadratic(n=2, seed=3)
    eta, steps, runs = 0.25, 25, 1000
    Ht, ws = torch.tensor(H), torch.tensor(w_star)
    paths = np.empty((runs, steps + 1, 2))
    for seed in range(runs):
        w = torch.tensor(w0, requires_grad=True)
        opt = DelayedSGD([w], lr=eta, workers=workers, schedule="random", momentum=m,
                         variant="momentum" if m else "plain", seed=seed)
        paths[seed, 0] = w0
        for t in range(steps):
            with torch.no_grad():
                w.grad = Ht @ (w - ws)
            opt.step()
            paths[seed, t + 1] = w.detach().numpy()
    mean, se = paths.mean(axis=0), paths.std(axis=0, ddof=1) / math.sqrt(runs)
    expected = theory.expected_momentum_iterates(H, w0, w_star, eta * (1 - m), theory.implicit_momentum(workers),
                                                 m, steps)
    assert np.all(np.abs(mean - expected) <= 5 * se + 1e-12)
    # and the expectation is not the synchronous one: the check has power
    sync = theory.expected_momentum_iterates(H, w0, w_star, eta * (1 - m), 0.0, m, steps)
    assert np.abs(mean - sync).max() > 10 * se.max()


# ---------------------------------------------------------------- figure 6: rate-optimal explicit momentum


@pytest.mark.parametrize("Q", [5, 20])
def test_without_staleness_the_optimum_is_heavy_ball(Q):
    """μ_S = 0: Polyak's optimum μ = ((√Q − 1)/(√Q + 1))², α = 4/(√λmax + √λmin)², rate √μ."""
    best = theory.optimal_momentum(theory.quadratic_spectrum(Q), 0.0)
    mu = ((math.sqrt(Q) - 1) / (math.sqrt(Q) + 1)) ** 2
    assert best["mu_l"] == pytest.approx(mu, abs=1e-3)
    assert best["alpha"] == pytest.approx(4 / (math.sqrt(Q) + 1) ** 2, rel=1e-2)
    assert best["rate"] == pytest.approx(math.sqrt(mu), abs=1e-4)


def test_optimal_momentum_beats_a_fine_brute_force_grid_and_turns_negative():
    lam = theory.quadratic_spectrum(5)
    best = theory.optimal_momentum(lam, 0.6)
    brute = min(theory.momentum_rate(lam, a, 0.6, mu) for mu in np.linspace(-0.6, 0.2, 81)
                for a in np.geomspace(0.5, 2.0, 81))
    assert best["rate"] <= brute + 1e-9
    assert best["mu_l"] < 0
    assert theory.momentum_rate(lam, best["alpha"], 0.6, best["mu_l"]) == pytest.approx(best["rate"], rel=1e-12)


# ---------------------------------------------------------------- the edge of momentum under geometric staleness


@pytest.mark.parametrize("q", [0.0, 0.5, 0.75])
@pytest.mark.parametrize("m", [-0.9, -0.45, 0.0, 0.45, 0.9])
def test_geometric_momentum_edge_agrees_with_companion_and_truncated_delay(q, m):
    edge = theory.geometric_momentum_edge(q, m)
    assert edge == pytest.approx(theory.geometric_momentum_edge(q, m, method="companion"), rel=1e-9)
    assert edge == pytest.approx(theory.critical_alpha(theory.geometric_delay(q), m, "momentum"), rel=1e-8)
    assert theory.spectral_radius(edge * 0.999, theory.geometric_delay(q), m, "momentum") < 1
    assert theory.spectral_radius(edge * 1.001, theory.geometric_delay(q), m, "momentum") > 1


def test_geometric_momentum_edge_closed_forms():
    for q in (0.0, 0.5, 0.8):
        assert theory.geometric_momentum_edge(q, 0.0) == pytest.approx(2 * (1 + q) / (1 - q), rel=1e-12)
    for m in (-0.5, 0.0, 0.7):
        assert theory.geometric_momentum_edge(0.0, m) == pytest.approx(2 * (1 + m) / (1 - m), rel=1e-12)


def test_implicit_momentum_and_correction():
    assert [theory.implicit_momentum(M) for M in (1, 2, 4)] == [0.0, 0.5, 0.75]
    assert theory.corrected_momentum(0.675, 4) == pytest.approx(-0.075)
    assert theory.corrected_momentum(0.0, 32) == -0.9
    with pytest.raises(ValueError, match="workers"):
        theory.implicit_momentum(0)
    with pytest.raises(ValueError, match="mu_s"):
        theory.geometric_momentum_edge(1.0, 0.0)
    with pytest.raises(ValueError, match="momentum"):
        theory.geometric_momentum_edge(0.5, -1.0)


# ---------------------------------------------------------------- the experiment: grid, score, tables

import json  # noqa: E402

from delay_stability.errors import UserError  # noqa: E402
from delay_stability.experiments import momentum as mom  # noqa: E402
from delay_stability.experiments import momentum_tables as mom_tables  # noqa: E402
from oracles import read_csv  # noqa: E402
from workflow_util import SNAKEMAKE, copy_workflow, edit_config, snakemake  # noqa: E402


def block(**over):
    b = {"train": {"model": "mlp", "model_args": {"hidden": [8]}, "dataset": "digits", "epochs": 3,
                   "batch_size": 32, "lr": 0.1},
         "workers": [1, 4], "momenta": [-0.45, 0.0, 0.9], "seeds": [0, 1],
         "lr_grid": {"center": 0.8, "worker_exponent": 1.0, "factor": 1.5, "below": 1, "above": 1},
         "target_loss": 1.0, "fixed_momentum": 0.9}
    b.update(over)
    return b


def test_the_grid_is_random_workers_with_an_eta_window_per_m():
    b = block()
    runs = mom_tables.runs(b, b["train"])
    assert len(runs) == 2 * 3 * 3 * 2
    assert mom_tables.lr_window(b, 1) == [0.5333, 0.8, 1.2]  # rounded to 4 significant digits
    assert mom_tables.lr_window(b, 4) == [0.1333, 0.2, 0.3]
    r = runs[0]
    o = r.spec["optimizer"]
    assert o["schedule"] == "random" and o["workers"] == 1 and o["variant"] == "momentum"
    assert r.spec["stop"]["settle"] == {"below": 1.0, "window": 1}
    assert r.name == "workers1/momentum-0.45/lr0.5333/seed0"
    ratios = [b2 / a for a, b2 in zip(mom_tables.lr_window(b, 4), mom_tables.lr_window(b, 4)[1:])]
    assert all(x == pytest.approx(1.5, rel=1e-3) for x in ratios)


def test_the_block_checks_name_the_key():
    with pytest.raises(UserError, match="fixed_momentum"):
        list(mom_tables.all_specs(block(momenta=[0.0, 0.5]), block()["train"]))
    with pytest.raises(UserError, match="workers"):
        list(mom_tables.all_specs(block(workers=[2, 4]), block()["train"]))


def test_the_decade_grid_is_the_papers_undampened_protocol_at_shifted_offsets():
    from delay_stability.experiments.claims import decade_offsets

    b = block(decade_grid={"top": 1.0, "decades": 3, "offsets": 4, "workers": [1, 4]})
    lrs = mom_tables.decade_lrs(b)
    assert lrs == [1.0, 0.5623, 0.3162, 0.1778, 0.1, 0.05623, 0.03162, 0.01778, 0.01, 0.005623, 0.003162, 0.001778]
    runs = mom_tables.decade_runs(b, b["train"])
    assert len(runs) == 2 * 3 * 12 * 2
    assert {r.spec["optimizer"]["dampening"] for r in runs} == {False}
    assert {r.spec["optimizer"]["schedule"] for r in runs} == {"random"}
    assert runs[0].name == "workers1/momentum-0.45/lr1/seed0" and runs[0].spec["lr"] == 1.0
    # the ledger reads the grids back from the learning rates alone: the paper's grid (1, .1, .01) first
    assert [[lrs[i] for i in g] for g in decade_offsets(lrs)] == [
        [1.0, 0.1, 0.01], [0.5623, 0.05623, 0.005623], [0.3162, 0.03162, 0.003162], [0.1778, 0.01778, 0.001778]]
    assert mom_tables.decade_runs(block(), block()["train"]) == []          # no decade_grid: no runs
    assert mom_tables.decade_workers(block(decade_grid={"top": 0.1})) == [1, 4]   # default: the block's workers
    with pytest.raises(UserError, match="decade_grid.workers"):
        list(mom_tables.all_specs(block(decade_grid={"top": 1.0, "workers": [4]}), block()["train"]))
    keys = [k for k, _ in mom_tables.all_specs(b, b["train"])]
    assert sum(k.startswith("momentum.decade_grid (") for k in keys) == 2 * 3 * 12   # one seed per configuration


def test_undampened_momentum_at_eta_is_dampened_momentum_at_eta_over_one_minus_mu():
    """Why the decade grid needs its own runs: undampened momentum at η (the paper's) moves exactly as
    the project's dampened momentum at η/(1 − μ), a different η for every μ (random workers, same seed)."""
    import torch

    from delay_stability.asgd import DelayedSGD

    lam = torch.linspace(0.5, 2.0, 6, dtype=torch.float64)
    for mu in (-0.675, 0.45):
        paths = []
        for lr, damp in ((0.3, False), (0.3 / (1 - mu), True)):
            w = torch.ones(6, dtype=torch.float64, requires_grad=True)
            opt = DelayedSGD([w], lr=lr, workers=4, schedule="random", momentum=mu, variant="momentum",
                             dampening=damp, seed=3)
            path = []
            for _ in range(40):
                with torch.no_grad():
                    w.grad = lam * w
                opt.step()
                path.append(w.detach().clone())
            paths.append(torch.stack(path))
        assert torch.allclose(paths[0], paths[1], rtol=1e-12, atol=1e-15)
        assert not torch.allclose(paths[0][-1], torch.ones(6, dtype=torch.float64))


def test_steps_to_target_interpolates_in_log_loss():
    rows = [{"epoch": 0, "step": 0, "train_loss": 2.0}, {"epoch": 1, "step": 10, "train_loss": 1.0},
            {"epoch": 2, "step": 20, "train_loss": 0.25}]
    assert mom_tables.steps_to_target(rows, 0.5) == pytest.approx(10 + 10 * 0.5)  # log 1 -> log 0.25, halfway
    assert mom_tables.steps_to_target(rows, 3.0) == 0.0
    assert mom_tables.steps_to_target(rows, 0.1) is None
    assert mom_tables.steps_to_target(rows[:1] + [{"epoch": 1, "step": 10, "train_loss": float("nan")}], 0.5) is None


def test_tuning_scores_only_configurations_where_every_seed_reached():
    rows = []
    for M in (1, 4):
        for mu in (-0.45, 0.0, 0.9):
            for lr in (0.1, 0.2, 0.3):
                for seed in (0, 1):
                    # best: M=1 at mu=0.9, lr=0.3; M=4 at mu=-0.45, lr=0.2; (4, 0.0, 0.1) has one seed missing
                    steps = 100 * M + 50 * abs(mu - (0.9 if M == 1 else -0.45)) + 30 * abs(lr - (0.3 if M == 1 else 0.2)) * 10 + seed
                    reached = not (M == 4 and mu == 0.0 and lr == 0.1 and seed == 1)
                    rows.append({"workers": M, "momentum": mu, "lr": lr, "seed": seed, "reached": reached,
                                 "steps_to_target": steps if reached else None})
    scores = mom_tables.score_rows(rows)
    cell = next(s for s in scores if (s["workers"], s["momentum"], s["lr"]) == (4, 0.0, 0.1))
    assert cell["steps_to_target"] is None and cell["reached"] == 1
    tuned = mom_tables.tuned_rows(scores)
    t = {(r["workers"], r["momentum"]): r for r in tuned}
    assert t[(1, 0.9)]["best_lr"] == 0.3 and t[(1, 0.9)]["lr_at_edge"] is True
    assert t[(4, -0.45)]["best_lr"] == 0.2 and t[(4, -0.45)]["lr_at_edge"] is False
    best = {(r["workers"], r["negatives"]): r for r in mom_tables.best_rows(tuned)}
    assert best[(1, True)]["best_momentum"] == 0.9 and best[(1, True)]["penalty"] == 1.0
    assert best[(4, True)]["best_momentum"] == -0.45 and best[(4, False)]["best_momentum"] == 0.0
    assert best[(4, True)]["penalty"] == pytest.approx(400.5 / 100.5)
    pen = {(r["workers"], r["strategy"]): r for r in mom_tables.penalty_rows(tuned, 0.9)}
    assert pen[(4, "fixed")]["momentum"] == 0.9
    assert pen[(4, "corrected")]["momentum"] == 0.0  # 0.9 - 0.75 = 0.15: nearest grid value 0.0


def test_theory_rows_reproduce_figure_6_crossings():
    rows = mom.theory_rows([5.0], [0.1, 0.2], eigenvalues=40)
    mu = {r["mu_s"]: r["optimal_mu_l"] for r in rows}
    assert mu[0.1] > 0 > mu[0.2]  # the paper: the optimum turns negative near mu_s = 0.15 for Q = 5


TINY_QUADRATIC = {"condition": 5.0, "eigenvalues": 6, "workers": [1, 3], "momenta": [-0.3, 0.0, 0.3],
                  "alpha_factors": [0.25, 0.5], "steps": 12, "seeds": 200}


def test_the_least_squares_stand_in_measures_what_theorem6_predicts():
    """One worker: DelayedSGD is deterministic and equals Theorem 6's recurrence exactly; three random
    workers: the mean over 200 schedule seeds is within 5 standard errors of the expected distance."""
    rows, best = mom.quadratic_rows(TINY_QUADRATIC)
    assert len(rows) == 2 * 3 * 2 and [b["workers"] for b in best] == [1, 3]
    for r in rows:
        if r["workers"] == 1:
            assert r["measured_distance"] == pytest.approx(r["expected_distance"], rel=1e-10)
        else:
            assert abs(r["measured_distance"] - r["expected_distance"]) <= 5 * r["measured_se"] + 1e-12
            assert r["measured_se"] > 0
    lam = theory.quadratic_spectrum(5.0, 6)
    assert best[1]["optimal_mu_l"] == pytest.approx(theory.optimal_momentum(lam, 2 / 3)["mu_l"], abs=1e-9)


def test_cli_threshold_and_lr_accept_negative_momentum(run_cli):
    code, out, _ = run_cli("threshold", "--geometric", 0.75, "--momentum", -0.45, "--json")
    assert code == 0
    result = json.loads(out)
    assert result["variant"] == "momentum" and result["momentum"] == -0.45
    assert result["alpha_star"] == pytest.approx(theory.geometric_momentum_edge(0.75, -0.45), rel=1e-8)
    code, out, _ = run_cli("lr", "--eta0", 0.1, "--tau", 4, "--momentum", -0.5, "--json")
    assert code == 0
    r = json.loads(out)
    assert r["eta"] == pytest.approx(0.1 * theory.critical_alpha(4, -0.5, "momentum") / (2 * 0.5 / 1.5), rel=1e-9)


@pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake is not installed")
def test_a_tiny_momentum_grid_builds_through_snakemake(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")

    def tiny(c):
        c["quick"]["momentum"] = dict(block(), train=dict(block()["train"], dataset_args={"train_size": 128},
                                                          threads=1),
                                      theory={"conditions": [5.0], "mu_s": [0.0, 0.5], "eigenvalues": 5,
                                              "fig7": {"condition": 10.0, "steps": 10, "momenta": [0.0]}},
                                      quadratic=dict(TINY_QUADRATIC, seeds=4, steps=4),
                                      decade_grid={"top": 1.0, "decades": 1, "offsets": 2, "workers": [1, 4]})

    edit_config(workdir, tiny)
    res = snakemake(workdir, "--cores", "2", "figures/momentum_vs_workers.pdf", "figures/momentum_penalty.pdf",
                    "figures/momentum_theory.pdf", "results/quick/momentum/decade/best.csv", timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    mdir = workdir / "results" / "quick" / "momentum"
    runs = read_csv(mdir / "runs.csv")
    assert len(runs) == 36
    for r in runs[:3]:
        assert json.loads((workdir / r["run"] / "run.json").read_text())["ensemble"]["members"] == 18
    best = read_csv(mdir / "best.csv")
    assert [c for c in best[0]] == ["workers", "negatives", "best_momentum", "best_lr", "steps_to_target", "penalty"]
    assert len(best) == 4 and {r["negatives"] for r in best} == {"True", "False"}
    theory_rows = read_csv(workdir / "results" / "theory" / "momentum_theory.csv")
    assert list(theory_rows[0]) == ["Q", "mu_s", "optimal_mu_l", "rate"] and len(theory_rows) == 2
    assert len(read_csv(mdir / "quadratic_best.csv")) == 2
    decade = read_csv(mdir / "decade" / "runs.csv")   # the paper's protocol: its own runs, undampened
    assert sorted({float(r["lr"]) for r in decade}) == [0.3162, 1.0] and len(decade) == 2 * 3 * 2 * 2
    for r in decade[:2]:
        rec = json.loads((workdir / r["run"] / "run.json").read_text())
        assert rec["spec"]["optimizer"]["dampening"] is False and rec["ensemble"]["members"] == 12
    assert len(read_csv(mdir / "decade" / "best.csv")) == 4
    for name in ("momentum_vs_workers", "momentum_penalty", "momentum_theory"):
        assert (workdir / "figures" / f"{name}.png").stat().st_size > 0
