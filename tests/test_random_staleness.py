"""Random staleness (theory section 8): mean, mean-square and almost-sure edges, and the
measured-vs-predicted experiment's tables."""

import itertools
import math

import numpy as np
import pytest

from delay_stability import theory as T

FAST = T.LyapunovSettings(chains=24, steps=1500, burn=200, renorm=10, seed=3)


# ----------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("criterion", ["mean", "mean-square"])
def test_one_worker_is_undelayed_sgd(criterion):
    assert T.worker_edge(1, criterion)["alpha"] == pytest.approx(2.0, rel=1e-5)


@pytest.mark.parametrize("M", [1, 2, 3, 5])
def test_round_robin_is_the_constant_delay_edge(M):
    expected = 2.0 * math.sin(math.pi / (4 * (M - 1) + 2))
    for criterion in T.CRITERIA:
        assert T.worker_edge(M, criterion, "round-robin")["alpha"] == pytest.approx(expected, rel=1e-9)
    # and the rank map of the oldest worker is that recurrence: its radius crosses 1 at the edge
    for factor, stable in ((0.99, True), (1.01, False)):
        A = T.worker_maps(M, factor * expected)[M - 1]
        assert (np.max(np.abs(np.linalg.eigvals(A))) < 1.0) == stable


@pytest.mark.parametrize("variant,m", [("momentum", 0.5), ("shifted", 0.5)])
def test_round_robin_momentum_maps_match_eq26_and_eq11(variant, m):
    M = 3
    edge = T.critical_alpha(M - 1, m, variant)
    A_lo = T.worker_maps(M, 0.995 * edge, m, variant)[M - 1]
    A_hi = T.worker_maps(M, 1.005 * edge, m, variant)[M - 1]
    assert np.max(np.abs(np.linalg.eigvals(A_lo))) < 1.0 < np.max(np.abs(np.linalg.eigvals(A_hi)))


@pytest.mark.parametrize("M", [2, 3, 6])
def test_uniform_workers_mean_edge_is_geometric_eq19(M):
    # E w_t of uniform workers follows eq. 19 with geometric delay q = 1 - 1/M: 2(1+q)/(1-q) = 4M - 2
    assert T.worker_edge(M, "mean")["alpha"] == pytest.approx(4 * M - 2, rel=1e-5)
    q = 1.0 - 1.0 / M
    assert T.critical_alpha(T.geometric_delay(q)) == pytest.approx(4 * M - 2, rel=1e-6)


def test_iid_mean_matrix_is_eq19():
    p = np.array([0.2, 0.5, 0.3])
    edge = T.critical_alpha(p)
    for variant, m in (("plain", 0.0), ("momentum", 0.4)):
        edge = T.critical_alpha(p, m, variant)
        assert T.iid_radius(p, 0.999 * edge, "mean", m, variant) < 1.0 < T.iid_radius(p, 1.001 * edge, "mean", m, variant)
    assert T.iid_edge(T.geometric_delay(0.5), "mean")["alpha"] == pytest.approx(6.0, rel=1e-9)


# ----------------------------------------------------------------------------- brute force
def _enumerate_second_moment(maps, probs, x0, n):
    """E[x_n x_nᵀ] over all switching sequences of length n (i.i.d. modes)."""
    S = np.zeros((len(x0), len(x0)))
    for seq in itertools.product(range(len(maps)), repeat=n):
        x, w = x0.copy(), 1.0
        for k in seq:
            x, w = maps[k] @ x, w * probs[k]
        S += w * np.outer(x, x)
    return S


def _iid_dense_maps(p, alpha, m, variant):
    D, c, d, _ = T._iid_structure(p, alpha, m, variant)
    return [D.toarray() + np.outer(c, d[k]) for k in range(len(p))]


@pytest.mark.parametrize("variant,m", [("plain", 0.0), ("momentum", 0.3), ("shifted", 0.3)])
def test_iid_second_moment_operator_by_enumeration(variant, m):
    p, alpha, n = np.array([0.5, 0.2, 0.3]), 0.7, 5
    maps = _iid_dense_maps(p, alpha, m, variant)
    x0 = np.random.default_rng(0).standard_normal(maps[0].shape[0])
    apply, _ = T.iid_second_moment(p, alpha, m, variant)
    S = np.outer(x0, x0)
    for _ in range(n):
        S = apply(S)
    np.testing.assert_allclose(S, _enumerate_second_moment(maps, p, x0, n), rtol=1e-10, atol=1e-12)
    # and the radius is that of the dense E[A ⊗ A]
    dense = sum(pk * np.kron(A, A) for pk, A in zip(p, maps))
    assert T.iid_radius(p, alpha, "mean-square", m, variant) == pytest.approx(
        np.max(np.abs(np.linalg.eigvals(dense))), rel=1e-9)


def test_iid_noise_adds_the_curvature_variance():
    p, alpha, nu = np.array([0.6, 0.4]), 0.5, 0.8
    base = _iid_dense_maps(p, 0.0, 0.0, "plain")
    G = [a - b for a, b in zip(_iid_dense_maps(p, 1.0, 0.0, "plain"), base)]
    A = [b + alpha * g for b, g in zip(base, G)]
    dense = sum(pk * (np.kron(a, a) + (nu * alpha) ** 2 * np.kron(g, g)) for pk, a, g in zip(p, A, G))
    assert T.iid_radius(p, alpha, "mean-square", noise=nu) == pytest.approx(
        np.max(np.abs(np.linalg.eigvals(dense))), rel=1e-9)


@pytest.mark.parametrize("variant,m", [("plain", 0.0), ("momentum", 0.5), ("shifted", 0.5)])
def test_uniform_workers_second_moment_by_enumeration(variant, m):
    M, alpha, n, nu = 2, 0.6, 6, 0.5
    A = T.worker_maps(M, alpha, m, variant)
    G = T.worker_maps(M, 1.0, m, variant) - T.worker_maps(M, 0.0, m, variant)
    dense = sum((np.kron(a, a) + (nu * alpha) ** 2 * np.kron(g, g)) / M for a, g in zip(A, G))
    assert T.worker_radius(M, alpha, "mean-square", momentum=m, variant=variant, noise=nu) == pytest.approx(
        np.max(np.abs(np.linalg.eigvals(dense))), rel=1e-9)
    x0 = np.random.default_rng(1).standard_normal(A.shape[1])
    S = _enumerate_second_moment(list(A), [0.5, 0.5], x0, n)
    vec = np.outer(x0, x0).ravel()
    mean_sq = sum(np.kron(a, a) / M for a in A)
    for _ in range(n):
        vec = mean_sq @ vec
    np.testing.assert_allclose(vec.reshape(S.shape), S, rtol=1e-10, atol=1e-12)


def test_worker_maps_follow_the_ages():
    # plain M = 3: landing rank 1 (middle) applies w' = w - α u_1, then the order is (w', u_0, u_2)
    A = T.worker_maps(3, 0.5)[1]
    x = np.array([1.0, 2.0, 3.0, 4.0])  # w, u_0, u_1, u_2
    w_new = 1.0 - 0.5 * 3.0
    np.testing.assert_allclose(A @ x, [w_new, w_new, 2.0, 4.0])


def test_gaussian_modes_by_brute_force_moments():
    # the Markov-jump mean recursion over n steps equals the enumeration of all landing sequences
    M, alpha, n = 2, 0.5, 6
    modes, s, r, t, p = T.landing_modes(M, "gaussian")
    A = T.worker_maps(M, alpha)
    x0 = np.array([1.0, 0.3, -0.7])
    index = {mode: i for i, mode in enumerate(modes)}
    expected = np.zeros(3)

    def walk(ages, x, w, depth):
        nonlocal expected
        if depth == n:
            expected += w * x
            return
        weights = T.gaussian_landing_weights(ages, M)
        weights = weights / weights.sum()
        for rank in range(M):
            new = (0,) + tuple(min(a + 1, T.gaussian_age_cap(M)) for k, a in enumerate(ages) if k != rank)
            walk(new, A[rank] @ x, w * weights[rank], depth + 1)

    walk(tuple(range(M)), x0, 1.0, 0)
    q = np.zeros((len(modes), 3))
    q[index[tuple(range(M))]] = x0
    for _ in range(n):
        out = np.zeros_like(q)
        np.add.at(out, t, p[:, None] * np.einsum("kij,kj->ki", A[r], q[s]))
        q = out
    np.testing.assert_allclose(q.sum(axis=0), expected, rtol=1e-8, atol=1e-12)


# ----------------------------------------------------------------------------- the criteria's order, Monte Carlo
@pytest.mark.parametrize("M", [2, 4])
def test_mean_square_below_almost_sure_below_mean(M):
    ms = T.worker_edge(M, "mean-square")["alpha"]
    a_s = T.worker_edge(M, "almost-sure", settings=FAST)
    assert ms < a_s["alpha"] - 3 * a_s["stderr"]
    assert a_s["alpha"] < T.worker_edge(M, "mean")["alpha"]
    # the rank-ordered staleness of uniform workers is spread; round robin (all at M-1) is the slowest law
    assert T.worker_edge(M, "mean-square", "round-robin")["alpha"] < ms


def test_gaussian_workers_between_round_robin_and_uniform():
    M = 3
    rr = T.worker_edge(M, "mean", "round-robin")["alpha"]
    g_ms = T.worker_edge(M, "mean-square", "gaussian")["alpha"]
    g_mean = T.worker_edge(M, "mean", "gaussian")["alpha"]
    assert rr < g_ms <= g_mean < T.worker_edge(M, "mean-square")["alpha"]


def _scalar_trajectories(M, alpha, steps, chains, seed):
    """log|w_T| of M uniform workers simulated directly in slot order (as DelayedSGD does)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(chains):
        w, u, log_scale = 1.0, np.ones(M), 0.0
        for t in range(steps):
            j = rng.integers(M)
            w = w - alpha * u[j]
            u[j] = w
            if t % 50 == 49:
                s = max(abs(w), np.abs(u).max())
                w, u, log_scale = w / s, u / s, log_scale + math.log(s)
        out.append(log_scale + math.log(max(abs(w), 1e-300)))
    return np.array(out)


def test_almost_sure_edge_against_simulated_trajectories():
    M = 3
    edge = T.worker_edge(M, "almost-sure", settings=FAST)["alpha"]
    below = _scalar_trajectories(M, 0.85 * edge, 3000, 12, 7)
    above = _scalar_trajectories(M, 1.15 * edge, 3000, 12, 7)
    assert np.median(below) < -10 and np.median(above) > 10
    # and the iid-delay simulator against the same check
    p = T.geometric_delay(0.5)
    iid = T.iid_edge(p, "almost-sure", settings=FAST)["alpha"]
    lam_lo, _ = T.iid_lyapunov(p, [0.85 * iid], settings=T.LyapunovSettings(chains=16, steps=2000, seed=11))
    lam_hi, _ = T.iid_lyapunov(p, [1.15 * iid], settings=T.LyapunovSettings(chains=16, steps=2000, seed=11))
    assert lam_lo[0] < 0 < lam_hi[0]


def test_iid_lyapunov_matches_a_direct_recurrence():
    # one chain, one α: λ̂ from the ring simulator equals log growth of x_{t+1} = x_t - α x_{t-τ_t}
    # computed directly with the same delays
    p, alpha = np.array([0.3, 0.3, 0.4]), 0.9
    S = T.LyapunovSettings(chains=2, steps=400, burn=0, renorm=400, seed=5)
    lam, _ = T.iid_lyapunov(p, [alpha], settings=S)
    rng = np.random.default_rng(5)
    taus = np.minimum(np.searchsorted(np.cumsum(p), rng.random((400, 2)) * 1.0, side="right"), 2)
    init = rng.standard_normal((2, 2, 3))
    logs = []
    for c in range(2):
        # ring slots hold x_t at t mod 3: x_0 at 0, x_{-1} at 2, x_{-2} at 1
        hist = {0: init[c, 0, 0], -1: init[c, 0, 2], -2: init[c, 0, 1]}
        for t in range(400):
            hist[t + 1] = hist[t] - alpha * hist[t - taus[t, c]]
        x_end = np.array([hist[400], hist[399], hist[398]])
        x_start = np.array([hist[0], hist[-1], hist[-2]])
        logs.append((math.log(np.linalg.norm(x_end)) - math.log(np.linalg.norm(x_start))) / 400)
    assert lam[0] == pytest.approx(np.mean(logs), rel=1e-9)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="criterion"):
        T.worker_edge(2, "median")
    with pytest.raises(ValueError, match="landing"):
        T.worker_edge(2, "mean", "fifo")
    with pytest.raises(ValueError, match="workers"):
        T.worker_edge(0, "mean")
    with pytest.raises(ValueError, match="noise"):
        T.worker_edge(2, "mean", noise=-1.0)


# ----------------------------------------------------------------------------- command line
def _threshold(capsys, *argv):
    import json

    from delay_stability.cli import main

    rc = main(["threshold", *argv, "--json"])
    out = capsys.readouterr()
    return rc, (json.loads(out.out) if rc == 0 else out.err)


def test_cli_threshold_by_criterion(capsys):
    rc, r = _threshold(capsys, "--workers", "3", "--landing", "round-robin", "--criterion", "mean-square")
    assert rc == 0 and r["alpha_star"] == pytest.approx(2 * math.sin(math.pi / 10), rel=1e-9)
    rc, r = _threshold(capsys, "--workers", "3", "--criterion", "mean")
    assert r["alpha_star"] == pytest.approx(10.0, rel=1e-5)
    rc, r = _threshold(capsys, "--geometric", "0.5", "--criterion", "mean")
    assert r["alpha_star"] == pytest.approx(6.0, rel=1e-9)
    rc, r = _threshold(capsys, "--probs", "0.5,0.5", "--criterion", "mean-square")
    assert r["alpha_star"] == pytest.approx(T.iid_edge([0.5, 0.5], "mean-square")["alpha"], rel=1e-12)
    rc, r = _threshold(capsys, "--workers", "2", "--criterion", "almost-sure", "--chains", "8", "--steps", "400")
    assert rc == 0 and r["stderr"] > 0 and r["lyapunov"]["chains"] == 8


def test_cli_staleness_log_by_criterion(capsys, tmp_path):
    log = tmp_path / "staleness.csv"
    log.write_text("update,worker,step,pulled,staleness,time\n" + "".join(
        f"{t},0,{t},{t - k},{k},0.0\n" for t, k in enumerate([0, 1, 1, 0, 1, 0])))
    rc, r = _threshold(capsys, "--staleness", str(log), "--criterion", "mean-square")
    assert rc == 0 and r["alpha_star"] == pytest.approx(T.iid_edge([0.5, 0.5], "mean-square")["alpha"], rel=1e-12)


@pytest.mark.parametrize("argv,message", [
    (["--workers", "0", "--criterion", "mean"], "--workers"),
    (["--tau", "2", "--landing", "gaussian"], "--landing"),
    (["--tau", "2", "--criterion", "mean", "--landing", "uniform"], "--landing"),
    (["--workers", "2", "--criterion", "mean", "--noise", "-1"], "--noise"),
    (["--workers", "9", "--landing", "gaussian", "--criterion", "mean-square"], "almost-sure"),
    (["--workers", "2", "--criterion", "almost-sure", "--chains", "1"], "--chains"),
])
def test_cli_bad_input_is_one_line(capsys, argv, message):
    rc, err = _threshold(capsys, *argv)
    assert rc == 2 and message in err and "Traceback" not in err and err.count("\n") == 1


def test_cli_threshold_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from delay_stability.cli import main; "
            "main(['threshold', '--workers', '3', '--criterion', 'mean-square']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


# ----------------------------------------------------------------------------- the experiment
from delay_stability.errors import UserError  # noqa: E402
from delay_stability.experiments import random_staleness as R  # noqa: E402
from delay_stability.experiments import random_staleness_tables as RT  # noqa: E402

BLOCK = {"models": {"geo": {"delay": {"kind": "geometric", "q": 0.5}}, "w2": {"workers": 2, "landing": "uniform"},
                    "rr3": {"workers": 3, "landing": "round-robin"}, "g2": {"workers": 2, "landing": "gaussian"}},
         "seeds": [0, 1], "lyapunov": {"chains": 8, "steps": 300, "burn": 50}}


def test_models_and_their_schedules():
    ms = R.models(BLOCK)
    assert ms["geo"]["probs"][:2] == pytest.approx([0.5, 0.25])
    assert R.optimizer_overrides(ms["geo"])["schedule"] == "iid"
    assert R.optimizer_overrides(ms["w2"]) == {"delay": 1, "schedule": "random", "workers": 2}
    assert R.optimizer_overrides(ms["rr3"]) == {"delay": 2, "schedule": "round_robin", "workers": None}
    assert R.nominal_tau(ms["geo"]) == 1 and R.nominal_tau(ms["rr3"]) == 2
    # the Gaussian landing rule is DelayedSGD's worker schedule "gaussian" (spread M/4, as the theory)
    assert R.optimizer_overrides(ms["g2"]) == {"delay": 1, "schedule": "gaussian", "workers": 2}
    assert R.measurable(ms["g2"]) and set(R.searched_models(BLOCK)) == {"geo", "w2", "rr3", "g2"}


def test_probe_specs_of_every_model_validate():
    from delay_stability.experiments.stability import probe_spec
    from delay_stability.spec import deep_merge, validate_spec

    base = {"model": "mlp", "dataset": "digits", "loss": "mse", "epochs": 1, "lr": 0.1}
    for label, model in R.searched_models(BLOCK).items():
        spec = probe_spec(base, {}, lr=0.1, tau=R.nominal_tau(model), variant="plain", momentum=0.0,
                          init_checkpoint="kicked.pt", epochs=5)
        spec = validate_spec(deep_merge(spec, {"seed": 1, "optimizer": R.optimizer_overrides(model)}))
        assert spec["seed"] == 1 and spec["optimizer"]["schedule"] == R.optimizer_overrides(model)["schedule"]


@pytest.mark.parametrize("entry,message", [
    ({"delay": 3}, "a distribution"),
    ({"workers": 0}, "workers"),
    ({"workers": 2, "landing": "fifo"}, "landing"),
    ({"workers": 2, "delay": {"kind": "geometric", "q": 0.5}}, "exactly one"),
    ({"workers": 2, "colour": 1}, "unknown keys"),
])
def test_bad_models_name_the_key(entry, message):
    with pytest.raises(UserError, match=f"random_staleness.models.x: .*{message}"):
        R.check_model("x", entry)


def test_interval_is_the_student_t_interval():
    mean, sd, lo, hi = RT.interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and sd == 1.0
    assert (lo, hi) == pytest.approx((2.0 - 4.303 / math.sqrt(3), 2.0 + 4.303 / math.sqrt(3)))
    assert RT.interval([1.5]) == (1.5, 0.0, 1.5, 1.5)


def test_summary_puts_measured_beside_every_criterion():
    preds = [{"model": "w2", "kind": "workers", "workers": 2, "landing": "uniform", "mean_staleness": 1.0,
              "criterion": c, "alpha": str(a), "stderr": "0.01" if c == "almost-sure" else "0.0"}
             for c, a in zip(T.CRITERIA, (6.0, 1.25, 1.5))]
    edges = [{"model": "w2", "alpha_measured": a} for a in (1.2, 1.4)]
    (row,) = RT.summary_rows(preds, edges)
    assert row["seeds"] == 2 and row["alpha_mean"] == pytest.approx(1.3)
    assert row["ratio_mean_square"] == pytest.approx(1.3 / 1.25) and row["ratio_mean"] == pytest.approx(1.3 / 6)
    assert row["alpha_almost_sure_stderr"] == 0.01
    (row,) = RT.summary_rows(preds, [])
    assert not row["measured"] and row["ratio_mean"] is None


def test_rescore_calls_stay_below_each_edge(tmp_path):
    from delay_stability.files import write_csv

    conts = tmp_path / "continuations.csv"
    hists = tmp_path / "histograms.csv"
    write_csv(conts, ("workers", "jitter", "factor", "repeat", "outcome", "alpha", "alpha_star_sequence_own"),
              [{"workers": 2, "jitter": 0.0, "factor": f, "repeat": 0, "outcome": o, "alpha": a,
                "alpha_star_sequence_own": 1.1} for f, o, a in ((0.7, "settled", 0.8), (1.4, "left", 1.6))])
    write_csv(hists, ("workers", "jitter", "staleness", "measured"),
              [{"workers": 2, "jitter": 0.0, "staleness": k, "measured": p} for k, p in enumerate([0.5, 0.5, 0.0])])
    S = T.LyapunovSettings(chains=8, steps=300, burn=50)
    rows, scores = RT.rescore(conts, hists, S)
    by = {s["predictor"]: s for s in scores}
    # histogram [0.5, 0.5]: the mean edge (eq. 19) is 2 > 1.6: it calls the leaving run 'stay' (wrong)
    assert T.critical_alpha([0.5, 0.5]) > 1.6 and by["histogram/mean"]["correct"] == 1
    # M = 2 round robin: edge 1 — calls 0.8 stay and 1.6 leave (both right); the sequence edge 1.1 too
    assert by["round-robin"]["correct"] == 2 and by["sequence"]["correct"] == 2
    assert by["workers/mean"]["total"] == 2 and len(rows) == 2 * len(scores)
    ms = T.iid_edge([0.5, 0.5], "mean-square")["alpha"]
    assert by["histogram/mean-square"]["correct"] == (int(0.8 < ms) + int(1.6 >= ms))


def test_the_figure_draws_from_the_tables(tmp_path):
    from delay_stability.files import write_csv
    from delay_stability.plots import plot_figure

    preds = [{"model": m, "kind": "workers", "workers": 2, "landing": "uniform", "mean_staleness": 1.0,
              "criterion": c, "alpha": a, "stderr": 0.0} for m in ("a", "b") for c, a in zip(T.CRITERIA, (6, 1.2, 1.5))]
    rows = RT.summary_rows(preds, [{"model": "a", "alpha_measured": x} for x in (1.3, 1.4)])
    summary, scores = tmp_path / "summary.csv", tmp_path / "scores.csv"
    write_csv(summary, RT.SUMMARY_COLUMNS, rows)
    write_csv(scores, RT.SCORE_COLUMNS, [{"predictor": "workers/mean", "source": "workers", "criterion": "mean",
                                         "correct": 1, "total": 2, "fraction": 0.5}])
    pdf, png = plot_figure("random_staleness", [summary, scores], tmp_path / "f.pdf", "quick")
    assert pdf.stat().st_size > 1000 and png.stat().st_size > 1000


def test_the_config_check_names_a_bad_model():
    import yaml

    from delay_stability.experiments import config as config_check
    from delay_stability.experiments.config import ConfigError

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    schema = yaml.safe_load((root / "workflow" / "schemas" / "config.schema.yaml").read_text())
    config_check.check(cfg, schema)  # the shipped blocks pass
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    cfg["quick"]["random_staleness"]["models"]["bad"] = {"workers": 2, "landing": "fifo"}
    with pytest.raises(ConfigError, match="quick.random_staleness.models.bad: .*landing"):
        config_check.check(cfg, schema)


def test_rescoring_leaves_out_the_moment_edges_of_a_long_measured_histogram(capsys):
    """A measured staleness law longer than MAX_MOMENT_SUPPORT keeps its mean edge (eq. 19, exact) and
    the worker-count predictors, and leaves out its mean-square and almost-sure edges, saying so."""
    K = RT.MAX_MOMENT_SUPPORT + 5
    hist = np.full(K + 1, 1.0 / (K + 1))
    settings = T.LyapunovSettings(chains=8, steps=300, burn=50, renorm=10, seed=1)
    out = RT.real_worker_predictors(2, hist, settings)
    assert "histogram/mean" in out and "histogram/mean-square" not in out and "histogram/almost-sure" not in out
    assert out["histogram/mean"][2] == pytest.approx(T.iid_edge(hist, "mean")["alpha"])
    assert {"workers/mean", "workers/mean-square", "workers/almost-sure", "round-robin"} <= set(out)
    assert "histogram/mean-square left out" in capsys.readouterr().err


@pytest.mark.parametrize("flag, named", [("{bad", "not valid JSON"), ('{"chain": 8}', "unknown key"),
                                          ('[8]', "expected a JSON object")])
def test_rescore_names_a_bad_lyapunov_flag(tmp_path, run_cli, flag, named):
    """--lyapunov is parsed as every JSON flag is (files.parse_json_object): a one-line error naming it."""
    status, _, err = run_cli("random-staleness-rescore", "--continuations", tmp_path / "c.csv",
                             "--histograms", tmp_path / "h.csv", "--lyapunov", flag,
                             "--rescored", tmp_path / "r.csv", "--scores", tmp_path / "s.csv")
    assert status == 2 and "--lyapunov" in err and named in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written
