"""Delayed edge of stability (delay_stability.eos): sharpness tracking along training, the plateau
analysis, the tables and the figure.

The tracked sharpness is checked against the dense Hessian (torch.autograd.functional.hessian +
eigvalsh) at the very weights it was measured at; the warm start against a cold start; resume
against an uninterrupted run; the predicted column against theory.critical_alpha.
"""

import json
import os

import numpy as np
import pytest
import torch

from delay_stability import files, plots, sharpness, theory, train
from delay_stability import spec as specs
from delay_stability.cli import main as cli_main
from delay_stability.experiments import eos, eos_tables
from delay_stability.plots import style
from delay_stability.errors import UserError
from oracles import dense_hessian, read_csv


TINY = {
    "model": "mlp",
    "model_args": {"hidden": [5], "activation": "tanh"},
    "dataset": "digits",
    "dataset_args": {"train_size": 40},
    "loss": "mse",
    "dtype": "float64",
    "batch_size": 0,
    "lr": 0.05,
    "epochs": 20,
    "eval_every": 10,
    "threads": 1,
    "optimizer": {"delay": 2},
}
TIGHT = 1e-10  # solver tolerance for the comparisons with dense linear algebra


def tiny(**override):
    return specs.apply_overrides({**TINY, **override}, [])


class WeightRecorder:
    """A second callback: the flat weights and the full-batch data at every tracked step."""

    def __init__(self, every):
        self.every, self.weights, self.data = every, {}, None

    def __call__(self, event, state):
        if event == "start" or (event == "step" and state.step % self.every == 0) or event == "end":
            self.weights[state.step] = torch.cat([p.detach().reshape(-1).clone() for p in state.model.parameters()])
            self.data = (state.dataset.train_x, state.dataset.train_y)
            self.model, self.loss_fn = state.model, state.loss_fn


def tracked_run(tmp_path, name="run", callbacks=(), every=5, tol=TIGHT, **spec_override):
    out = str(tmp_path / name)
    tracker = eos.SharpnessTracker(out, every, tol=tol, max_iter=200)
    summary = train.run_training(tiny(**spec_override), out, callbacks=[tracker, *callbacks])
    return out, tracker, summary





# ------------------------------------------------------------------------------------------------
# tracking
# ------------------------------------------------------------------------------------------------


def test_tracked_sharpness_is_the_dense_hessian_top_eigenvalue_at_each_tracked_step(tmp_path):
    recorder = WeightRecorder(5)
    out, tracker, _ = tracked_run(tmp_path, callbacks=[recorder])
    rows = eos.read_track(os.path.join(out, eos.TRACK_FILE))
    assert [r["step"] for r in rows] == [0, 5, 10, 15, 20]
    assert not os.path.exists(os.path.join(out, eos.PARTIAL_FILE))
    x, y = recorder.data
    for r in rows:
        w = recorder.weights[r["step"]]
        top = torch.linalg.eigvalsh(dense_hessian(recorder.model, recorder.loss_fn, [(x, y)], at=w))[-1].item()
        assert r["sharpness"] == pytest.approx(top, rel=1e-8), r["step"]
        assert r["converged"] == 1
        # the loss column is the mean training loss at the same weights
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(w, recorder.model.parameters())
            loss = recorder.loss_fn(recorder.model(x), y).item()
        assert r["loss"] == pytest.approx(loss, rel=1e-12)
    # the sharpness moves along training (lr 0.05, delay 2: near the edge 0.618/0.05): the test is not about a constant
    assert len({round(r["sharpness"], 6) for r in rows}) == len(rows)


def test_warm_started_lanczos_agrees_with_a_cold_start_and_needs_fewer_hvps(tmp_path):
    recorder = WeightRecorder(5)
    out, tracker, _ = tracked_run(tmp_path, callbacks=[recorder])
    rows = eos.read_track(os.path.join(out, eos.TRACK_FILE))
    x, y = recorder.data
    cold_hvps = []
    for r in rows[1:]:  # step 0 is a cold start in both
        torch.nn.utils.vector_to_parameters(recorder.weights[r["step"]], recorder.model.parameters())
        cold = sharpness.top_eigenvalue(recorder.model, recorder.loss_fn, [(x, y)], tol=TIGHT, max_iter=200,
                                        generator=torch.Generator().manual_seed(123))
        assert r["sharpness"] == pytest.approx(cold.eigenvalue, rel=1e-8)
        cold_hvps.append(cold.hvps)
    assert sum(r["hvps"] for r in rows[1:]) < sum(cold_hvps)


def test_tracking_leaves_the_training_trajectory_bit_for_bit_unchanged(tmp_path):
    tracked_run(tmp_path, name="tracked")
    train.run_training(tiny(), str(tmp_path / "plain"))
    a = train.load_checkpoint(str(tmp_path / "tracked" / "final.pt"))["model"]
    b = train.load_checkpoint(str(tmp_path / "plain" / "final.pt"))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


class Kill:
    """Interrupt training after ``step`` optimizer steps (as a kill would)."""

    def __init__(self, step):
        self.step = step

    def __call__(self, event, state):
        if event == "step" and state.step == self.step:
            raise KeyboardInterrupt


def test_resume_gives_the_same_track_as_an_uninterrupted_run(tmp_path):
    spec = {"epochs": 30, "checkpoint_every": 10}
    whole, _, _ = tracked_run(tmp_path, name="whole", **spec)
    with pytest.raises(KeyboardInterrupt):  # killed at step 27: checkpoint at 20, rows up to 25 written
        tracked_run(tmp_path, name="killed", callbacks=[Kill(27)], **spec)
    partial = eos.read_track(str(tmp_path / "killed" / eos.PARTIAL_FILE))
    assert [r["step"] for r in partial] == [0, 5, 10, 15, 20, 25]
    assert not os.path.exists(tmp_path / "killed" / eos.TRACK_FILE)
    resumed, _, summary = tracked_run(tmp_path, name="killed", **spec)
    assert summary["steps"] == 30
    a = eos.read_track(os.path.join(whole, eos.TRACK_FILE))
    b = eos.read_track(os.path.join(resumed, eos.TRACK_FILE))
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 5, 10, 15, 20, 25, 30]
    for ra, rb in zip(a, b):
        assert ra["loss"] == rb["loss"]  # training resumed bit for bit
        # and the tracking: the warm-start eigenvector is saved with every checkpoint
        assert (ra["sharpness"], ra["hvps"], ra["residual"]) == (rb["sharpness"], rb["hvps"], rb["residual"])
    assert not os.path.exists(os.path.join(resumed, eos.PARTIAL_FILE))


def test_resume_without_the_earlier_track_is_refused(tmp_path):
    spec = {"epochs": 30, "checkpoint_every": 10}
    with pytest.raises(KeyboardInterrupt):
        tracked_run(tmp_path, name="killed", callbacks=[Kill(27)], **spec)
    os.remove(tmp_path / "killed" / eos.PARTIAL_FILE)
    with pytest.raises(UserError, match="lacks step 0"):
        tracked_run(tmp_path, name="killed", **spec)


def test_resume_with_other_tracking_settings_is_refused(tmp_path):
    out = str(tmp_path / "run")
    eos.run_tracked(tiny(epochs=4), out, every=2, tol=1e-6)
    with pytest.raises(UserError, match="track_every 2 -> 3"):
        eos.run_tracked(tiny(epochs=4), out, every=3, tol=1e-6)
    # a finished run of another spec is started afresh, with the new settings
    eos.run_tracked(tiny(epochs=6), out, every=3, tol=1e-6)
    assert [r["step"] for r in eos.read_track(os.path.join(out, eos.TRACK_FILE))] == [0, 3, 6]


def test_a_corrupt_track_names_the_file(tmp_path):
    path = tmp_path / eos.TRACK_FILE
    path.write_text("step,foo\n1,2\n")
    with pytest.raises(UserError, match="not a sharpness track"):
        eos.read_track(str(path))
    path.write_text(",".join(eos.TRACK_COLUMNS) + "\n0,1.0,oops,3,1,0.0,0.1\n")
    with pytest.raises(UserError, match="line 2 is corrupt"):
        eos.read_track(str(path))


def test_tracker_rejects_bad_settings(tmp_path):
    with pytest.raises(UserError, match="--track-every"):
        eos.SharpnessTracker(str(tmp_path), 0)
    with pytest.raises(UserError, match="--tol"):
        eos.SharpnessTracker(str(tmp_path), 5, tol=0.0)
    with pytest.raises(UserError, match="--hvp-batch"):
        eos.SharpnessTracker(str(tmp_path), 5, hvp_batch=-1)


# ------------------------------------------------------------------------------------------------
# the predicted edge and the plateau
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant,m,tau", [("plain", 0.0, 0), ("plain", 0.0, 3), ("momentum", 0.5, 2),
                                           ("shifted", 0.3, 1)])
def test_edge_lr_makes_the_predicted_plateau_the_edge(variant, m, tau):
    spec = {k: v for k, v in tiny().items() if k != "lr"}
    spec["optimizer"] = {"delay": tau, "variant": variant, "momentum": m}
    out = eos.with_edge_lr(spec, 12.5)
    assert out["lr"] == pytest.approx(theory.critical_alpha(tau, m, variant) / 12.5, rel=1e-15)
    assert eos.predicted_edge(specs.validate_spec(out)) == pytest.approx(12.5, rel=1e-14)
    if tau == 0 and variant == "plain":
        assert out["lr"] == pytest.approx(2 / 12.5, rel=1e-14)  # eq. 6 at τ = 0: α* = 2
    with pytest.raises(UserError, match="remove 'lr'"):
        eos.with_edge_lr({**spec, "lr": 0.1}, 12.5)


def test_geometric_staleness_of_random_workers_has_the_momentum_edge():
    """M workers picked at random: P(τ=k) = (1/M)(1−1/M)^k, whose edge is 2(1+q)/(1−q), q = 1 − 1/M."""
    spec = specs.validate_spec(tiny(optimizer={"delay": 3, "workers": 4, "schedule": "random"}))
    q = 0.75
    assert eos.edge_alpha(spec) == pytest.approx(2 * (1 + q) / (1 - q), rel=1e-6)


def test_plateau_is_the_median_over_the_last_half():
    steps = np.arange(0, 101, 10)
    values = np.array([1.0, 3, 6, 9, 11, 10.5, 9.5, 10.2, 9.9, 10.1, np.nan])  # a diverged last point dropped
    out = eos_tables.plateau(steps, values, predicted=10.0, edge_tol=0.05)
    # last finite step 90 -> window t >= 45: 10.5, 9.5, 10.2, 9.9, 10.1
    assert out["plateau"] == 10.1
    assert out["ratio"] == pytest.approx(1.01)
    assert out["first_edge_step"] == 40 and out["reached_edge"]
    assert out["approach"] == "below" and out["start_sharpness"] == 1.0 and out["max_sharpness"] == 11.0
    assert out["plateau_mean"] == pytest.approx(np.mean([10.5, 9.5, 10.2, 9.9, 10.1]))
    late = eos_tables.plateau(steps[:10], [1, 2, 3, 4, 5, 6, 7, 8, 9.6, 9.9], predicted=10.0)
    assert late["first_edge_step"] == 80 and not late["reached_edge"]  # reached after the window began
    never = eos_tables.plateau(steps[:3], [1, 2, 3], predicted=10.0)
    assert never["first_edge_step"] is None and not never["reached_edge"]
    above = eos_tables.plateau(steps[:3], [20, 12, 10], predicted=10.0)
    assert above["approach"] == "above" and above["reached_edge"]


def _finished_runs(tmp_path):
    """Three short tracked runs: plain τ=1 (fixed lr), momentum m=0.5 τ=2 and shifted m=0.3 τ=1 (edge lr)."""
    runs = []
    base = {k: v for k, v in tiny(epochs=6).items() if k != "lr"}
    for name, optimizer, lr, edge in [
        ("plain", {"delay": 1}, 0.05, None),
        ("momentum", {"delay": 2, "variant": "momentum", "momentum": 0.5}, None, 4.0),
        ("shifted", {"delay": 1, "variant": "shifted", "momentum": 0.3}, None, 4.0),
    ]:
        spec = {**base, "optimizer": optimizer, **({"lr": lr} if lr else {})}
        out = str(tmp_path / name)
        eos.run_tracked(spec, out, every=3, tol=1e-6, series="fixed" if lr else "scaled", edge=edge)
        runs.append(out)
    return runs


def test_collect_predicted_column_is_critical_alpha_over_lr(tmp_path):
    runs = _finished_runs(tmp_path)
    plateaus, tracks, edges = eos_tables.collect(runs)
    assert len(plateaus) == 3 and len(tracks) == 3 * 3  # steps 0, 3, 6 per run
    for r in plateaus:
        alpha = theory.critical_alpha(r["tau"], r["momentum"], r["variant"])
        assert r["predicted"] == pytest.approx(alpha / r["lr"], rel=1e-14)
        assert r["ratio"] == pytest.approx(r["plateau"] / r["predicted"], rel=1e-14)
        rows = eos.read_track(os.path.join(r["run"], eos.TRACK_FILE))
        window = [x["sharpness"] for x in rows if x["step"] >= 3]
        assert r["plateau"] == pytest.approx(float(np.median(window)), rel=1e-15)
    scaled = [r for r in plateaus if r["series"] == "scaled"]
    assert [r["predicted"] for r in scaled] == pytest.approx([4.0, 4.0], rel=1e-14)
    assert {(r["variant"], r["momentum"]) for r in edges} == {("plain", 0.0), ("momentum", 0.5), ("shifted", 0.3)}
    for r in edges:
        assert r["alpha_star"] == theory.critical_alpha(r["tau"], r["momentum"], r["variant"])
    assert max(r["tau"] for r in edges) == 2


def test_cli_writes_the_tables_and_reports_user_errors(tmp_path, capsys):
    runs = _finished_runs(tmp_path)
    out = tmp_path / "eos"
    code = cli_main(["eos-collect", "--run", *[os.path.join(r, eos.TRACK_FILE) for r in runs],
                     "--out", str(out / "plateaus.csv"), "--tracks", str(out / "tracks.csv"),
                     "--theory", str(out / "theory.csv")])
    assert code == 0
    table = read_csv(out / "plateaus.csv")
    assert list(table[0]) == list(eos_tables.PLATEAU_COLUMNS)
    for row in table:
        alpha = theory.critical_alpha(int(row["tau"]), float(row["momentum"]), row["variant"])
        assert float(row["predicted"]) == pytest.approx(alpha / float(row["lr"]), rel=1e-14)
    assert list(read_csv(out / "tracks.csv")[0]) == list(eos_tables.TRACKS_COLUMNS)
    # user mistakes: one line, exit status 2, naming the flag or file
    assert cli_main(["eos-collect", "--run", str(tmp_path / "nope"), "--out", str(out / "x.csv")]) == 2
    assert "--run " + str(tmp_path / "nope") + ": no such file" in capsys.readouterr().err
    os.remove(os.path.join(runs[0], "summary.json"))
    assert cli_main(["eos-collect", "--run", runs[0], "--out", str(out / "x.csv")]) == 2
    assert "summary.json: no such file" in capsys.readouterr().err
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(tiny(epochs=2)))
    assert cli_main(["eos-run", "--spec", str(spec), "--out", str(tmp_path / "r"), "--track-every", "0"]) == 2
    assert "--track-every must be an integer >= 1" in capsys.readouterr().err
    assert cli_main(["eos-run", "--spec", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "r"),
                     "--track-every", "1"]) == 2
    assert "--spec: no such file" in capsys.readouterr().err
    assert cli_main(["eos-run", "--spec", str(spec), "--out", str(tmp_path / "r"), "--track-every", "1",
                     "--edge", "5"]) == 2
    assert "remove 'lr'" in capsys.readouterr().err


def test_delayed_eos_figure_draws_every_run_against_its_edge(tmp_path):
    runs = _finished_runs(tmp_path)
    plateaus, tracks, edges = eos_tables.collect(runs)
    paths = {}
    for name, columns, rows in [("plateaus", eos_tables.PLATEAU_COLUMNS, plateaus), ("tracks", eos_tables.TRACKS_COLUMNS, tracks),
                                ("theory", eos_tables.THEORY_COLUMNS, edges)]:
        paths[name] = str(tmp_path / f"{name}.csv")
        files.write_csv(paths[name], columns, rows)
    tables = [style.read_table(paths[n]) for n in ("theory", "tracks", "plateaus")]  # any order
    fig = plots.load_plotters()["delayed_eos"](tables, "quick", {"burn_in": "10 steps of GD"})
    fixed_ax, scaled_ax, summary_ax = [ax for ax in fig.axes if ax.get_visible()]
    # fixed panel: the dashed line of the plain run is its predicted edge α*(1)/η = 1/0.3
    dashed = [line for line in fixed_ax.get_lines() if line.get_linestyle() == "--"]
    assert [line.get_ydata()[0] for line in dashed] == pytest.approx([1.0 / 0.05], rel=1e-12)
    # scaled panel: each curve is the run's track divided by its predicted edge
    for r in [r for r in plateaus if r["series"] == "scaled"]:
        expected = [t["sharpness"] / r["predicted"] for t in tracks
                    if t["series"] == "scaled" and t["variant"] == r["variant"]]
        assert any(np.allclose(line.get_ydata(), expected) for line in scaled_ax.get_lines())
    # summary panel: the theory curve of each (variant, m) is 1/α*(τ)
    for v, m in {(r["variant"], r["momentum"]) for r in edges}:
        taus = [r["tau"] for r in edges if (r["variant"], r["momentum"]) == (v, m)]
        inv = [1 / theory.critical_alpha(t, m, v) for t in taus]
        assert any(len(line.get_ydata()) == len(inv) and np.allclose(line.get_ydata(), inv)
                   for line in summary_ax.get_lines())
    pdf, png = style.save_figure(fig, str(tmp_path / "delayed_eos.pdf"))
    assert pdf.stat().st_size > 0 and png.stat().st_size > 0
    with pytest.raises(UserError, match="plateaus table"):
        plots.load_plotters()["delayed_eos"](tables[:2], "quick")
