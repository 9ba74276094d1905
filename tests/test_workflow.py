"""The workflow as a whole, dry-run (`snakemake -n`): every training block of the config is checked
when the DAG is built, a figure target pulls in only the runs it draws, and the rules' parameters
hold the computation only (no interpreter or checkout path)."""

import re

import pytest
import yaml

from delay_stability.experiments import stability as stability_exp
from delay_stability.experiments import stability_tables
from workflow_util import REPO, SNAKEMAKE, copy_workflow, edit_config, snakemake

pytestmark = pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake is not installed")


def planned_jobs(output):
    """(rule, {wildcard: value}) of every job in a dry run's plan."""
    jobs, rule = [], None
    for line in output.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = m.group(1)
            jobs.append((rule, {}))
        elif rule and (m := re.match(r"^\s+wildcards: (.*)$", line)):
            jobs[-1][1].update(dict(kv.split("=", 1) for kv in m.group(1).split(", ")))
    return jobs


def stability(c):
    return c["quick"]["stability"]


#: Broken configs as a new user writes them: (edit, what the message must name), one per kind of
#: check (spec keys and values, model arguments, schema, grids, scale, plots, an experiment's own
#: check); tests/test_config.py mutates every key of the config in-process.
BROKEN = [
    (lambda c: stability(c)["baseline"].update(optimizer={"delay": 2, "momentun": 0.9}), "optimizer.momentun"),
    (lambda c: stability(c)["baseline"].update(epochs="five thousand"), "epochs"),
    (lambda c: stability(c)["baseline"].update(lr=-1), "lr"),
    (lambda c: stability(c)["baseline"].update(model="resnet9000"), "model"),
    (lambda c: c["quick"]["eos"]["train"].update(model_args={"hiden": [8]}), "model_args.hiden"),
    (lambda c: c["quick"]["table1"]["networks"][0]["train"].update(loss="hinge"), "loss"),
    (lambda c: stability(c).update(taus=[0, -1]), "taus"),
    (lambda c: c.update(scale="huge"), "scale"),
    (lambda c: stability(c)["plots"]["fig2"].update(variant="momentum", momentum=0.3), "plots.fig2"),
    (lambda c: c["quick"]["eos"]["fixed"].update(lrs=[0.05, 0.05]), "eos.fixed"),
]


@pytest.mark.parametrize("edit, key", BROKEN)
def test_a_broken_config_fails_the_dry_run_naming_the_key(tmp_path, edit, key):
    workdir = copy_workflow(tmp_path)
    edit_config(workdir, edit)
    result = snakemake(workdir, "-n")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert key in output, output[-2000:]
    assert "Traceback" not in output
    assert not (workdir / "results").exists()


def test_the_default_config_dry_runs_and_sets_the_schema_defaults(tmp_path):
    workdir = copy_workflow(tmp_path)
    result = snakemake(workdir, "-n")
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = planned_jobs(result.stdout)
    rules = {rule for rule, _ in jobs}
    assert {"train", "stability_search", "eos_fixed", "theory_table", "stability_figure", "eos_figure"} <= rules
    # every figure of the registry is drawn by its experiment's generic figure rule, once
    from delay_stability.registry import EXPERIMENTS

    drawn = sorted((rule, wildcards["figure"]) for rule, wildcards in jobs if rule.endswith("_figure"))
    assert drawn == sorted((f"{e.name}_figure", f) for e in EXPERIMENTS for f in e.figures)


def test_a_paper_figure_pulls_in_only_the_runs_it_draws(tmp_path):
    """fig2 at paper scale: its baseline, minimum, sharpness, kick and the plain searches; not the
    curves of fig12 and not the shifted-momentum experiment of fig4."""
    workdir = copy_workflow(tmp_path)
    result = snakemake(workdir, "-n", "figures/fig2.pdf", "--config", "scale=paper")
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = planned_jobs(result.stdout)
    config = yaml.safe_load((REPO / "config.yaml").read_text())["paper"]["stability"]
    config.setdefault("plots", {}).setdefault("fig2", {"variant": "plain", "momentum": 0.0})
    searches = [w for rule, w in jobs if rule == "stability_search"]
    expected = stability_tables.figure_searches(config, "fig2")
    assert sorted((w["variant"], float(w["m"]), int(w["tau"])) for w in searches) == sorted(expected)
    assert all(w["exp"] == "stability" for rule, w in jobs if "exp" in w)
    rules = [rule for rule, _ in jobs]
    assert "stability_curve" not in rules and rules.count("train") == 1
    assert "stability_tables" not in rules  # the table of every search is not the figure's


def test_fig12_and_fig4_pull_in_their_own_runs(tmp_path):
    workdir = copy_workflow(tmp_path)
    result = snakemake(workdir, "-n", "figures/fig4.pdf", "--config", "scale=paper")
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = planned_jobs(result.stdout)
    assert {w["exp"] for _, w in jobs if "exp" in w} == {"shifted_stability"}
    assert "stability_curve" not in [r for r, _ in jobs]
    result = snakemake(workdir, "-n", "figures/fig12.pdf", "--config", "scale=paper")
    jobs = planned_jobs(result.stdout)
    config = yaml.safe_load((REPO / "config.yaml").read_text())["paper"]["stability"]
    curves = [w for r, w in jobs if r == "stability_curve"]
    assert len(curves) == len(stability_exp.curve_points(config))
    searched = {int(w["tau"]) for r, w in jobs if r == "stability_search"}
    assert searched == set(config["curves"]["taus"])
