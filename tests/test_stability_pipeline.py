"""The minima-stability chain (baseline -> minimum -> sharpness -> kick -> searches -> tables -> fig2)
on a tiny config through the real Snakemake workflow, and the pieces of delay_stability.pipeline
against closed forms."""

import csv
import json
import math

import pytest

from delay_stability import pipeline, tables
from delay_stability.errors import UserError
from delay_stability.theory import critical_alpha
from workflow_util import SNAKEMAKE, copy_workflow, edit_config, snakemake

pytestmark = pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake is not installed")

TAUS = [0, 2]


def tiny(config):
    """A stability experiment that runs in seconds: 48 digits, MLP 64-24-10, short budgets."""
    block = config["quick"]["stability"]
    block["baseline"].update(model_args={"hidden": [24], "activation": "tanh"},
                             dataset_args={"train_size": 48}, epochs=300, eval_every=100,
                             checkpoint_every=100)
    block["taus"] = TAUS
    block["variants"] = {"plain": {"variant": "plain", "momenta": [0.0]},
                         "shifted": {"variant": "shifted", "momenta": [0.5]}}
    block["search"].update(alpha_max=4096.0, rel_tol=0.08, base_epochs=300, epochs_per_tau=300,
                           max_epochs=1000)
    block["continuation"] = {"eval_every": 20}
    block["curves"] = {"taus": [2], "lr_factors": [0.8, 1.5], "epochs": 300}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("stability"))
    edit_config(workdir, tiny)
    result = snakemake(workdir, "--cores", "2", "figures/fig2.pdf", "figures/fig4.pdf", "figures/fig12.pdf")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_thresholds_table_schema_and_theory(built):
    rows = read_csv(built / "results" / "quick" / "stability" / "thresholds.csv")
    required = {"experiment", "variant", "momentum", "tau", "lr_max", "sharpness", "alpha_measured",
                "alpha_theory"}
    assert required <= set(rows[0])
    assert {(r["variant"], float(r["momentum"]), int(r["tau"])) for r in rows} == {
        (v, m, t) for v, m in (("plain", 0.0), ("shifted", 0.5)) for t in TAUS}
    sharpness = json.loads((built / "results/quick/stability/sharpness.json").read_text())["eigenvalue"]
    for r in rows:
        assert float(r["sharpness"]) == pytest.approx(sharpness, rel=1e-12)
        assert float(r["alpha_measured"]) == pytest.approx(float(r["lr_max"]) * sharpness, rel=1e-9)
        theory = critical_alpha(int(r["tau"]), momentum=float(r["momentum"]), variant=r["variant"])
        assert float(r["alpha_theory"]) == pytest.approx(theory, rel=1e-12)
        # the measured edge of a real network at an exact minimum: within the search's resolution
        # plus what a short budget cannot see
        assert float(r["alpha_measured"]) / theory == pytest.approx(1.0, abs=0.15)


def test_fits_table_summarises_the_thresholds(built):
    rows = read_csv(built / "results" / "quick" / "stability" / "thresholds.csv")
    fits = {(f["variant"], float(f["momentum"])): f
            for f in read_csv(built / "results" / "quick" / "stability" / "fits.csv")}
    plain = [r for r in rows if r["variant"] == "plain"]
    fit = fits[("plain", 0.0)]
    ratios = [float(r["ratio"]) for r in plain]
    assert float(fit["ratio_min"]) == min(ratios) and float(fit["ratio_max"]) == max(ratios)
    taus = [int(r["tau"]) for r in plain]
    inv = [1 / float(r["lr_max"]) for r in plain]
    slope = (inv[1] - inv[0]) / (taus[1] - taus[0])  # two points: the line through them, R² = 1
    assert float(fit["slope"]) == pytest.approx(slope, rel=1e-9)
    assert float(fit["r2"]) == pytest.approx(1.0)


def test_minimum_is_a_critical_point_and_the_kick_is_quadratic(built):
    polish = json.loads((built / "results/quick/stability/minimum/polish.json").read_text())
    assert polish["method"] == "gauss_newton"
    assert polish["grad_norm_after"] < 1e-8 < polish["grad_norm_before"]
    kick = json.loads((built / "results/quick/stability/kick/kick.json").read_text())
    increase = kick["loss_kicked"] - kick["loss_minimum"]
    # L(w* + εu) − L(w*) = ½ a ε² + O(ε³) along the top eigenvector u
    assert increase == pytest.approx(0.5 * kick["sharpness"] * kick["norm"] ** 2, rel=1e-2)


def test_curves_stay_below_and_leave_above_the_threshold(built):
    rows = read_csv(built / "results" / "quick" / "stability" / "curves.csv")
    by_factor = {}
    for r in rows:
        by_factor.setdefault(float(r["lr_factor"]), []).append(float(r["train_loss"]))
    kick = json.loads((built / "results/quick/stability/kick/kick.json").read_text())
    assert max(by_factor[0.8]) <= kick["loss_kicked"] * 1.0001  # stays: the kick dies out
    assert max(by_factor[1.5]) > 9 * kick["loss_kicked"]        # leaves the minimum
    assert (built / "figures" / "fig12.png").exists()


def test_diverged_runs_are_recorded_as_escaped(built):
    probes = read_csv(built / "results" / "quick" / "stability" / "probes.csv")
    diverged = [p for p in probes if p["status"] == "diverged"]
    assert diverged, "the top of the search range must blow up"
    assert all(p["escaped"] == "True" and p["epochs_to_escape"] for p in diverged)
    for p in probes:  # every probe is a full run folder with its summary
        summary = json.loads((built / p["run_dir"] / "summary.json").read_text())
        assert summary["status"] == p["status"]


def test_rerun_is_a_no_op_and_plot_options_only_redraw(built):
    again = snakemake(built, "-n", "figures/fig2.pdf")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    edit_config(built, lambda c: c["quick"]["stability"]["plots"]["fig2"].update(variant="shifted", momentum=0.5))
    plot_only = snakemake(built, "-n", "figures/fig2.pdf")
    assert plot_only.returncode == 0
    assert "fig2 " in plot_only.stdout and "stability_search" not in plot_only.stdout
    assert "stability_baseline" not in plot_only.stdout


def test_training_option_reruns_only_the_affected_runs(built):
    edit_config(built, lambda c: c["quick"]["stability"]["continuation"].update(eval_every=10))
    dry = snakemake(built, "-n", "figures/fig2.pdf")
    assert dry.returncode == 0
    assert "stability_search" in dry.stdout
    for rule in ("stability_baseline", "stability_minimum", "stability_sharpness", "stability_kick"):
        assert rule not in dry.stdout


# ----------------------------------------------------------------------------- unit pieces
def test_escape_and_settle_levels():
    kick = {"loss_minimum": 1e-6, "loss_kicked": 5e-6}
    rule = pipeline.escape_rule(kick, {"kind": "kick_growth", "growth": 3.0})
    assert rule == {"factor": 0.0, "delta": pytest.approx(1e-6 + 9 * 4e-6), "stop": True}
    assert pipeline.escape_rule(kick, {"kind": "loss", "factor": 2.0, "delta": 0.01}) == {
        "factor": 2.0, "delta": 0.01, "stop": True}
    settle = pipeline.settle_rule(kick, {"kind": "kick_growth", "growth": 3.0, "settle": 10.0}, tau=4)
    assert settle == {"below": pytest.approx(1e-6 + 4e-6 / 100), "window": 24}
    assert pipeline.settle_rule(kick, {"kind": "loss", "factor": 2.0, "delta": 0.0}, tau=4) is None
    with pytest.raises(UserError, match="kick"):
        pipeline.escape_rule({"loss_minimum": 1.0, "loss_kicked": 1.0}, {"kind": "kick_growth", "growth": 3})


def test_budget_and_fit():
    search = {"base_epochs": 400, "epochs_per_tau": 600, "max_epochs": 5000}
    assert [pipeline.probe_budget(t, search) for t in (0, 4, 16)] == [400, 2800, 5000]
    slope, intercept, r2 = tables.linear_fit([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0])
    assert (slope, intercept, r2) == pytest.approx((2.0, 1.0, 1.0))
    assert tables.linear_fit([0, 1, 2], [0.0, 1.0, 0.0])[2] == pytest.approx(0.0)


def test_bisection_brackets_a_known_edge(tmp_path, monkeypatch):
    """The search logic against an oracle: a probe 'leaves' iff α > α_edge."""
    edge = 0.3473
    monkeypatch.setattr(pipeline, "run_probe", lambda spec, out: {
        "escaped": spec["lr"] * 10.0 > edge, "diverged": False, "epochs_to_escape": 5,
        "epochs_run": 5, "status": "escaped" if spec["lr"] * 10.0 > edge else "completed",
        "final": {"train_loss": 0.0}})
    result = pipeline.search_threshold(
        base_spec={"lr": 1.0}, continuation={}, kick={"sharpness": 10.0, "checkpoint": "k.pt",
                                                     "loss_minimum": 0.0, "loss_kicked": 1e-6},
        search={"alpha_min": 0.01, "alpha_max": 48.0, "scan_factor": 2.0, "rel_tol": 0.01,
                "escape": {"kind": "kick_growth", "growth": 3.0}, "base_epochs": 10,
                "epochs_per_tau": 0, "max_epochs": 10},
        variant="plain", momentum=0.0, tau=4, out_dir=tmp_path, log=lambda m: None)
    assert result["alpha_measured"] <= edge < result["alpha_escape"]
    assert result["alpha_escape"] / result["alpha_measured"] - 1 <= 0.01
    assert result["alpha_theory"] == pytest.approx(2 * math.sin(math.pi / 18))
    assert not result["censored"]
