"""The real-workers experiment: its run configs, its tables and its figure (no processes here; the
parameter server's real processes are tested in test_server.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from delay_stability import theory
from delay_stability.experiments import real_workers as rw
from delay_stability.experiments import real_workers_tables as rw_tables
from delay_stability.files import read_csv, write_json

BLOCK = {"workers": [2, 4], "jitters": [0.0, 0.004], "factors": [0.7, 1.4], "repeats": 2, "variant": "plain",
         "momentum": 0.0, "pilot": {"factor": 0.5, "updates": 100}, "updates": 300,
         "escape": {"growth": 3.0, "settle": 10.0, "window": 10}, "eval_every": 5, "checkpoint_every": 50,
         "timeout": 60, "worker_timeout": 30, "time_limit": 300, "max_restarts": 2, "seed": 0}
KICK = {"checkpoint": "kicked.pt", "sharpness": 40.0, "loss_minimum": 1e-20, "loss_kicked": 2e-5}


def test_run_config_has_a_pilot_then_every_factor_and_repeat():
    from delay_stability.server import check_config

    cfg = check_config(rw.run_config(BLOCK, KICK, 4, 0.004))
    names = [p["name"] for p in cfg["phases"]]
    assert names == ["pilot", "x0.7-r0", "x0.7-r1", "x1.4-r0", "x1.4-r1"]
    assert cfg["phases"][0]["lr"] == pytest.approx(0.5 * theory.eq6_alpha(3) / 40.0)  # round robin τ = M - 1
    stop = cfg["phases"][1]["stop"]
    assert stop["above"] == pytest.approx(1e-20 + 9 * (2e-5 - 1e-20))  # the kick grew 3-fold
    assert stop["below"] == pytest.approx(1e-20 + (2e-5 - 1e-20) / 100)
    assert cfg["edge_from"] == "pilot" and cfg["jitter"] == 0.004 and cfg["init_checkpoint"] == "kicked.pt"
    assert rw.launch_flags(BLOCK, 4) == "--nproc 5 --max-restarts 2"
    assert rw.settings(BLOCK) == [(2, 0.0), (2, 0.004), (4, 0.0), (4, 0.004)]


def test_the_edge_of_a_logged_sequence_is_eq6_for_a_constant_delay_and_sees_the_order():
    from delay_stability import staleness

    for tau in (0, 1, 3):
        assert staleness.sequence_edge([tau] * 3000) == pytest.approx(theory.eq6_alpha(tau), rel=3e-3)
    # one histogram (half τ = 0, half τ = 3; eq. 19's edge 2), two orders: alternating, or a τ = 3 run first
    alternating, runs = [0, 3] * 1000, [3] * 1000 + [0] * 1000
    assert theory.critical_alpha([0.5, 0, 0, 0.5]) == pytest.approx(2.0)
    assert staleness.sequence_edge(runs) == pytest.approx(theory.eq6_alpha(3), rel=0.02)  # the τ = 3 run decides
    assert staleness.sequence_edge(alternating) > 1.5 * staleness.sequence_edge(runs)
    x, top = [1.0] * 4, 1.0  # sequence_growth is the recurrence itself
    for k in [0, 3, 1, 2]:
        x.append(x[-1] - 1.5 * x[-1 - k])
        top = max(top, abs(x[-1]))
    assert staleness.sequence_growth(1.5, [0, 3, 1, 2]) == pytest.approx(top, rel=1e-15) and top > 1


def _fake_run(folder, workers, jitter, pilot_staleness, outcomes):
    """A launch's folder as the server writes it (server.write_phase_files)."""
    from delay_stability.server import write_phase_files

    rows = [{"update": t, "worker": 1 + t % workers, "step": t // workers, "pulled": t - s, "staleness": s,
             "time": 0.001 * t} for t, s in enumerate(pilot_staleness)]
    edge = {"alpha_star": theory.critical_alpha(np.bincount(pilot_staleness) / len(pilot_staleness)),
            "mean_staleness": float(np.mean(pilot_staleness))}
    edge["predicted_lr"] = edge["alpha_star"] / 40.0
    write_phase_files(folder / "pilot", rows, {"workers": workers, "jitter": jitter, "updates": len(rows),
                                                "mean_staleness": edge["mean_staleness"]})
    phases = {"pilot": {}}
    for (factor, repeat), outcome in outcomes.items():
        name = rw.phase_name(factor, repeat)
        phases[name] = {}
        write_phase_files(folder / name, rows[:10], {"factor": factor, "outcome": outcome, "mean_staleness": 1.0,
                                                     "updates": 10,
                                                     "predicted_lr": edge["predicted_lr"],
                                                     "lr": factor * edge["predicted_lr"]})
    write_json(folder / "summary.json", {"phases": phases, "edge": edge, "lost": [], "restarts": 0,
                                         "sharpness": 40.0})


def test_collect_writes_the_issue_columns_and_the_laws(tmp_path):
    runs = []
    for m, j in [(2, 0.0), (4, 0.004)]:
        d = rw.setting_dir(tmp_path, m, j)
        _fake_run(d, m, j, [m - 1] * 90 + [0] * 10, {(0.7, 0): "stayed", (1.4, 0): "left"})
        runs.append(d)
    out = {k: tmp_path / f"{k}.csv" for k in ("outcomes", "histograms", "settings")}
    assert rw_tables.collect(runs, out["outcomes"], out["histograms"], out["settings"],
                      continuations_csv=tmp_path / "continuations.csv") == 4
    own = read_csv(tmp_path / "continuations.csv")
    assert float(own[0]["alpha"]) == pytest.approx(0.7 * theory.critical_alpha([0.1, 0.9]), rel=1e-12)  # a·η
    assert own[0]["updates"] == "10"
    # the fake continuations log the pilot's first 10 updates: τ = M - 1 = 1 (M = 2) throughout
    assert float(own[0]["alpha_star_own"]) == pytest.approx(theory.eq6_alpha(1))
    with open(out["outcomes"]) as f:
        assert f.readline().strip() == "workers,jitter,factor,repeat,outcome,mean_staleness,predicted_lr,lr"
    rows = read_csv(out["outcomes"])
    assert [(r["workers"], r["factor"], r["outcome"]) for r in rows] == [
        ("2", "0.7", "stayed"), ("2", "1.4", "left"), ("4", "0.7", "stayed"), ("4", "1.4", "left")]
    sets = {int(r["workers"]): r for r in read_csv(out["settings"])}
    for m, r in sets.items():
        q = 1 - 1 / m
        assert float(r["alpha_star_geometric"]) == pytest.approx(2 * (1 + q) / (1 - q), rel=1e-9)
        assert float(r["alpha_star_round_robin"]) == pytest.approx(theory.eq6_alpha(m - 1), rel=1e-12)
        assert float(r["tv_round_robin"]) == pytest.approx(0.1)  # 10% of the updates at τ = 0
    hist = [r for r in read_csv(out["histograms"]) if r["workers"] == "4"]
    assert float(hist[3]["measured"]) == pytest.approx(0.9) and float(hist[3]["round_robin"]) == 1.0
    assert float(hist[0]["geometric"]) == pytest.approx(0.25)

    from delay_stability.plots import plot_figure

    pdf, png = plot_figure("real_staleness", [str(p) for p in out.values()], str(tmp_path / "fig.pdf"), "quick",
                           json.loads(rw_tables.plot_options(BLOCK, "quick", {"model": "mlp", "dataset": "digits"})))
    assert (tmp_path / "fig.pdf").stat().st_size > 0 and (tmp_path / "fig.png").exists()
