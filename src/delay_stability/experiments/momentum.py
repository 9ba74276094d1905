"""Asynchrony begets Momentum (Mitliagkas, Zhang, Hadjis, Ré, Allerton 2016): the best explicit
momentum falls with the number of workers, even below zero.

This module holds what the ``momentum-theory`` and ``momentum-quadratic`` jobs compute, and nothing
else: the network grid below (the plan of the ensemble and training jobs), the score, the tables and
the figures' options live in experiments/momentum_tables.py, so that editing them reruns neither job.

    momentum_theory        figures 6-7 of the paper from Theorem 7 (``theory.optimal_momentum``):
                           results/theory/momentum_theory.csv (Q, mu_s, optimal_mu_l, rate) and
                           results/theory/momentum_fig7.csv (Q, mu_s, strategy, mu_l, alpha, rate, distance);
                           with the least-squares stand-in (``quadratic_rows``): DelayedSGD with random
                           workers on the quadratic, the grid μ_L of least measured distance after T steps
                           beside Theorem 6's expected distance and Theorem 7's rate
                           (results/<scale>/momentum/quadratic.csv, quadratic_best.csv)
    momentum_vs_workers    best explicit μ (fewest steps to a target training loss, η tuned per (M, μ))
                           vs M with the implicit-momentum prediction μ_L = μ* − (1 − 1/M)
    momentum_penalty       steps to target normalised to the best case vs M: tuned μ ≥ 0, tuned μ
                           with negatives, fixed μ = 0.9, and the implicit-momentum correction

The network grid: M random workers (``schedule: random``: geometric staleness, Theorem 5; not round
robin) for every M of ``workers``, explicit server momentum μ of ``momenta`` (with dampening, the
project's convention: the dampening factor (1 − μ) is a rescaling of η, absorbed by tuning η per
(M, μ)), a learning-rate window per M (``lr_grid``: η = center · M^(−worker_exponent) · factor^k,
k = −below..above, neighbours a factor ``factor`` apart) and ``seeds``. The runs of one M train as
one ensemble job (``delay-stability ensemble``), each stopping at the target (the settle rule).

Steps to target. A run's training loss is the mean over the minibatches of an epoch (metrics.csv,
every epoch); a run reaches the target loss L* at the first epoch whose mean is below L*, and its
steps to target are interpolated in log loss between that epoch's end and the previous row's (the
row of epoch 0 is the loss at w_0). A configuration (M, μ, η) is scored by the mean over seeds of
the steps to target, and only when every seed reached it (else it has no score). Tuning: per
(M, μ) the η of least score; per (M, allowed μ) the μ of least tuned score. The penalty is a score
divided by the best score of the whole table (the best case, as the paper normalises).

Tables under results/<scale>/momentum/ (``delay-stability momentum-collect``):

    runs.csv     one row per run: workers, momentum, lr, seed, status, reached, steps_to_target,
                 final_train_loss, epochs_run, run
    scores.csv   one row per (workers, momentum, lr): seeds, reached, steps_to_target (mean), steps_std
    tuned.csv    one row per (workers, momentum): best_lr, steps_to_target, steps_std, lr_at_edge
    best.csv     one row per (workers, negatives): best_momentum, best_lr, steps_to_target, penalty
    penalty.csv  one row per (workers, strategy): momentum, lr, steps_to_target, penalty, where strategy
                 is tuned_nonnegative, tuned_all, fixed (μ = fixed_momentum) or corrected (the grid μ
                 nearest to μ*(M=1) − (1 − 1/M), clipped to the grid)
    paper.csv    the paper's values (figures 3, 4, 8), read off its figures (for the plots)
"""

from __future__ import annotations

import math

import numpy as np

from .. import files, theory
from ..spec import deep_merge

THEORY_COLUMNS = ("Q", "mu_s", "optimal_mu_l", "rate")
FIG7_COLUMNS = ("Q", "mu_s", "strategy", "mu_l", "alpha", "rate", "steps", "distance")
DEFAULT_THEORY = {"conditions": [5.0, 20.0], "mu_s": [round(0.1 * i, 1) for i in range(10)], "eigenvalues": 40,
                  "fig7": {"condition": 10.0, "steps": 10, "momenta": [0.0, 0.5]}}


# ================================================================ the theory tables (figures 6, 7)


def theory_rows(conditions, mu_s_values, eigenvalues=40) -> list[dict]:
    """Figure 6: for each Q and μ_S, the rate-optimal explicit momentum over μ_L ∈ (−1, 1) and α > 0
    (Theorem 7) on the quadratic with ``eigenvalues`` eigenvalues of AᵀA spread evenly over [1, Q]."""
    rows = []
    for Q in conditions:
        lam = theory.quadratic_spectrum(Q, eigenvalues)
        for mu_s in mu_s_values:
            best = theory.optimal_momentum(lam, float(mu_s))
            rows.append({"Q": float(Q), "mu_s": float(mu_s), "optimal_mu_l": best["mu_l"], "rate": best["rate"]})
    return rows


def fig7_rows(condition, mu_s_values, steps=10, momenta=(0.0, 0.5), eigenvalues=40) -> list[dict]:
    """Figure 7: the distance to the optimum after ``steps`` steps, γ^steps (Theorem 7), with α and μ_L
    tuned ("tuned") and with α tuned at each fixed μ_L of ``momenta`` ("fixed")."""
    lam = theory.quadratic_spectrum(condition, eigenvalues)
    rows = []
    for mu_s in mu_s_values:
        best = theory.optimal_momentum(lam, float(mu_s))
        rows.append({"Q": float(condition), "mu_s": float(mu_s), "strategy": "tuned", "mu_l": best["mu_l"],
                     "alpha": best["alpha"], "rate": best["rate"], "steps": steps, "distance": best["rate"] ** steps})
        for mu_l in momenta:
            r = theory.optimal_rate_at_momentum(lam, float(mu_s), float(mu_l))
            rows.append({"Q": float(condition), "mu_s": float(mu_s), "strategy": f"fixed_{mu_l:g}", "mu_l": mu_l,
                         "alpha": r["alpha"], "rate": r["rate"], "steps": steps, "distance": r["rate"] ** steps})
    return rows


def theory_options(block: dict | None) -> dict:
    """The block's ``theory`` options with their defaults."""
    opts = deep_merge(DEFAULT_THEORY, (block or {}).get("theory") or {})
    return opts


def write_theory(out_theory, out_fig7, options: dict) -> None:
    o = deep_merge(DEFAULT_THEORY, options or {})
    files.write_csv(out_theory, list(THEORY_COLUMNS), theory_rows(o["conditions"], o["mu_s"], o["eigenvalues"]))
    f7 = o["fig7"]
    files.write_csv(out_fig7, list(FIG7_COLUMNS),
                    fig7_rows(f7["condition"], o["mu_s"], f7["steps"], f7["momenta"], o["eigenvalues"]))


# ================================================================ the least-squares stand-in (measured vs predicted)

QUADRATIC_COLUMNS = ("Q", "workers", "mu_s", "mu_l", "alpha", "steps", "seeds", "measured_distance",
                     "measured_se", "expected_distance", "rate")
QUADRATIC_BEST_COLUMNS = ("Q", "workers", "mu_s", "measured_mu_l", "expected_mu_l", "rate_mu_l", "optimal_mu_l")
DEFAULT_QUADRATIC = {"condition": 5.0, "eigenvalues": 40, "workers": [1, 2, 4],
                     "momenta": [-0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6],
                     "alpha_factors": [0.03125, 0.0625, 0.125, 0.25, 0.5, 1.0], "steps": 25, "seeds": 24}


def _mean_path_distance(lam, w0, alpha, workers, mu_l, steps, seeds):
    """(‖mean over seeds of w_T‖, its standard error) of DelayedSGD(schedule="random", workers) with
    server momentum μ_L on f(w) = ½ Σ λ_i w_i² (minimum 0) from w_0, full gradients, lr chosen so
    that the stale gradient's step is α: η = α/(1 − μ_L) (dampening)."""
    import torch

    from ..asgd import DelayedSGD

    lam_t = torch.tensor(lam, dtype=torch.float64)
    finals = []
    for seed in range(seeds if workers > 1 else 1):  # one worker: no randomness
        w = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
        opt = DelayedSGD([w], lr=alpha / (1.0 - mu_l), workers=workers, schedule="random", momentum=mu_l,
                         variant="momentum", seed=seed)
        for _ in range(steps):
            with torch.no_grad():
                w.grad = lam_t * w
            opt.step()
        finals.append(w.detach().numpy().copy())
    finals = np.array(finals)
    mean = finals.mean(axis=0)
    se = 0.0 if len(finals) == 1 else float(np.sqrt((finals.var(axis=0, ddof=1) / len(finals)).sum()))
    return float(np.linalg.norm(mean)), se


def quadratic_rows(options: dict | None = None) -> tuple[list[dict], list[dict]]:
    """The least-squares stand-in of figures 6-7: on the quadratic with eigenvalues spread over [1, Q],
    for each M, μ_L of ``momenta`` and α = (Theorem 7's best α at that μ_L) × ``alpha_factors``: the
    distance of DelayedSGD's mean iterate to the optimum after ``steps`` steps over ``seeds`` schedule
    seeds (measured), the exact expected distance (Theorem 6's recurrence) and the rate γ (Theorem 7).
    Returns (rows, best rows): per M the grid μ_L that minimises each (over α), and Theorem 7's
    continuous optimum."""
    o = deep_merge(DEFAULT_QUADRATIC, options or {})
    lam = theory.quadratic_spectrum(o["condition"], o["eigenvalues"])
    w0 = np.ones(lam.size) / math.sqrt(lam.size)
    rows, best = [], []
    for M in o["workers"]:
        mu_s = theory.implicit_momentum(int(M))
        for mu_l in o["momenta"]:
            base = theory.optimal_rate_at_momentum(lam, mu_s, float(mu_l))["alpha"]
            for f in o["alpha_factors"]:
                alpha = base * float(f)
                measured, se = _mean_path_distance(lam, w0, alpha, int(M), float(mu_l), int(o["steps"]), int(o["seeds"]))
                expected = theory.expected_momentum_iterates(np.diag(lam), w0, np.zeros_like(w0), alpha, mu_s,
                                                             float(mu_l), int(o["steps"]))[-1]
                rows.append({"Q": float(o["condition"]), "workers": int(M), "mu_s": mu_s, "mu_l": float(mu_l),
                             "alpha": alpha, "steps": int(o["steps"]), "seeds": int(o["seeds"]) if M > 1 else 1,
                             "measured_distance": measured, "measured_se": se,
                             "expected_distance": float(np.linalg.norm(expected)),
                             "rate": theory.momentum_rate(lam, alpha, mu_s, float(mu_l))})
        mine = [r for r in rows if r["workers"] == int(M)]
        best.append({"Q": float(o["condition"]), "workers": int(M), "mu_s": mu_s,
                     "measured_mu_l": min(mine, key=lambda r: r["measured_distance"])["mu_l"],
                     "expected_mu_l": min(mine, key=lambda r: r["expected_distance"])["mu_l"],
                     "rate_mu_l": min(mine, key=lambda r: r["rate"])["mu_l"],
                     "optimal_mu_l": theory.optimal_momentum(lam, mu_s)["mu_l"]})
    return rows, best


def write_quadratic(out_rows, out_best, options: dict | None = None) -> list[dict]:
    rows, best = quadratic_rows(options)
    files.write_csv(out_rows, list(QUADRATIC_COLUMNS), rows)
    files.write_csv(out_best, list(QUADRATIC_BEST_COLUMNS), best)
    return best


# ================================================================ command line


def _cli_theory(args) -> int:
    options = files.parse_json_object(args.options, "--options") if args.options else {}
    write_theory(args.out, args.fig7, options)
    for r in files.read_csv(args.out, "momentum_theory.csv"):
        print(f"Q={float(r['Q']):g} mu_s={float(r['mu_s']):.1f} optimal mu_l={float(r['optimal_mu_l']):+.3f} "
              f"rate={float(r['rate']):.4f}")
    return 0


def _cli_quadratic(args) -> int:
    options = files.parse_json_object(args.options, "--options") if args.options else {}
    for r in write_quadratic(args.out, args.best, options):
        print(f"M={r['workers']} mu_s={r['mu_s']:.3f}: best mu_l measured {r['measured_mu_l']:+.2f}, expected "
              f"{r['expected_mu_l']:+.2f}, by rate {r['rate_mu_l']:+.2f}; Theorem 7 optimum {r['optimal_mu_l']:+.3f}")
    return 0


def register(subparsers) -> None:
    """Add ``momentum-theory`` and ``momentum-quadratic``."""
    p = subparsers.add_parser(
        "momentum-theory",
        description="Figures 6-7 of Asynchrony begets Momentum from Theorem 7: the rate-optimal explicit "
                    "momentum vs implicit momentum for quadratics of condition number Q.")
    p.add_argument("--out", required=True, metavar="CSV", help="figure 6 table (Q, mu_s, optimal_mu_l, rate)")
    p.add_argument("--fig7", required=True, metavar="CSV", help="figure 7 table (distance after `steps` steps)")
    p.add_argument("--options", default=None, metavar="JSON",
                   help="conditions, mu_s, eigenvalues, fig7 {condition, steps, momenta} (defaults: the paper's)")
    p.set_defaults(func=_cli_theory)

    p = subparsers.add_parser(
        "momentum-quadratic",
        description="The least-squares stand-in: DelayedSGD with random workers on a quadratic of condition "
                    "number Q, the grid momentum that minimises the measured distance after T steps, beside "
                    "Theorem 6's expected distance and Theorem 7's rate.")
    p.add_argument("--out", required=True, metavar="CSV", help="one row per (M, mu_l, alpha)")
    p.add_argument("--best", required=True, metavar="CSV", help="one row per M: measured vs predicted best mu_l")
    p.add_argument("--options", default=None, metavar="JSON",
                   help="condition, eigenvalues, workers, momenta, alpha_factors, steps, seeds")
    p.set_defaults(func=_cli_quadratic)
