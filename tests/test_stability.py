"""The minima-stability chain (baseline -> minimum -> sharpness -> kick -> searches -> tables -> fig2)
on a tiny config through the real Snakemake workflow, and the pieces of delay_stability.experiments.stability
against closed forms."""

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from delay_stability.experiments import stability as pipeline
from delay_stability.experiments import stability_tables as tables
from delay_stability.errors import UserError
from delay_stability.theory import critical_alpha
from workflow_util import SNAKEMAKE, copy_workflow, edit_config, snakemake, tiny_stability
from oracles import read_csv

pytestmark = pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake is not installed")

TAUS = [0, 2]
#: the figures and the tables of every search (what `make figures` builds of this experiment)
TARGETS = ("figures/fig2.pdf", "figures/fig4.pdf", "figures/fig12.pdf",
           *(f"results/quick/stability/{t}.csv" for t in ("thresholds", "fits", "probes", "curves")))


def tiny(config):
    tiny_stability(config, TAUS)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("stability"))
    edit_config(workdir, tiny)
    result = snakemake(workdir, "--cores", "2", *TARGETS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir


def planned(result, rule):
    """Whether a dry run's plan has a job of ``rule``."""
    return re.search(rf"^(local)?rule {rule}:$", result.stdout, re.M) is not None





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


def test_a_copy_elsewhere_with_another_interpreter_path_has_nothing_to_do(built, tmp_path):
    """A colleague's copy, a cluster's scratch checkout, another venv: the same computation, so
    nothing reruns (no rule's params hold the checkout's or the interpreter's path)."""
    moved = tmp_path / "elsewhere" / "project"
    shutil.copytree(built, moved, symlinks=True)
    venv = tmp_path / "another-venv"
    venv.symlink_to(Path(sys.executable).parents[1], target_is_directory=True)
    python = venv / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import sys, snakemake; print(sys.executable)"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == str(python) != sys.executable
    result = snakemake(moved, "-n", *TARGETS, python=python)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]


def test_code_edits_rerun_exactly_the_jobs_that_use_the_code(built, tmp_path):
    """The code hash of a rule follows the modules it really uses, transitively: a plot edit
    redraws the figures only, a table edit rebuilds the tables and figures, an engine edit reruns
    the training jobs."""
    moved = tmp_path / "project"
    shutil.copytree(built, moved, symlinks=True)
    src = tmp_path / "src"
    shutil.copytree(Path(pipeline.__file__).parents[2], src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {"PYTHONPATH": str(src)}

    def plan_after(edit):
        path = src / "delay_stability" / edit
        original = path.read_text()
        path.write_text(original + "\n_AN_EDIT = 1\n")  # code: a comment or docstring would rerun nothing
        try:
            result = snakemake(moved, "-n", *TARGETS, env=env)
        finally:
            path.write_text(original)
        assert result.returncode == 0, result.stderr[-2000:]
        return {rule for rule in RULES if planned(result, rule)}

    untouched = snakemake(moved, "-n", *TARGETS, env=env)
    assert "Nothing to be done" in untouched.stdout + untouched.stderr
    assert plan_after("plots/stability.py") == {"stability_figure"}
    assert plan_after("plots/theory.py") == set()  # fig4a's figure is not drawn here; fig4 reads its table
    assert plan_after("experiments/stability_tables.py") == {"stability_tables", "stability_figure_tables",
                                                              "stability_figure"}
    assert {"train", "stability_search", "stability_curve"} <= plan_after("asgd.py")
    assert "train" not in plan_after("sharpness.py") and "stability_sharpness" in plan_after("sharpness.py")


RULES = ("train", "stability_minimum", "stability_sharpness", "stability_kick", "stability_search",
         "stability_curve", "stability_tables", "stability_figure_tables", "stability_figure", "theory_table")


def test_the_report_holds_every_figure_with_its_caption(built, tmp_path):
    report = tmp_path / "report.html"
    result = snakemake(built, "--report", str(report), *TARGETS)
    assert result.returncode == 0, result.stderr[-2000:]
    html = report.read_text()
    for name in ("fig2.png", "fig12.png", "fig4.png"):
        assert name in html
    assert "Minima stability (quick)" in html and "appendix F" in html


def test_rerun_is_a_no_op_and_plot_options_only_redraw(built):
    again = snakemake(built, "-n", "figures/fig2.pdf")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    edit_config(built, lambda c: c["quick"]["stability"]["plots"]["fig2"].update(variant="shifted", momentum=0.5))
    plot_only = snakemake(built, "-n", "figures/fig2.pdf")
    assert plot_only.returncode == 0
    assert planned(plot_only, "stability_figure") and not planned(plot_only, "stability_search")
    assert not planned(plot_only, "train")


def test_training_option_reruns_only_the_affected_runs(built):
    edit_config(built, lambda c: c["quick"]["stability"]["continuation"].update(eval_every=10))
    dry = snakemake(built, "-n", "figures/fig2.pdf")
    assert dry.returncode == 0
    assert planned(dry, "stability_search")
    for rule in ("train", "stability_minimum", "stability_sharpness", "stability_kick"):
        assert not planned(dry, rule)


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
