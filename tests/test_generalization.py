"""Generalization under delay (delay_stability.experiments.generalization): the grids, the tables
from run folders, the claims (eta_div, eq. 8, the 1/eta_div fit), the figures, and a small real
workflow build of fig3."""

import json
import math
import os

import pytest
import yaml

from delay_stability import files
from delay_stability.cli import main as cli_main
from delay_stability.errors import UserError
from delay_stability.experiments import generalization as gen
from oracles import read_csv
from workflow_util import REPO, SNAKEMAKE, copy_workflow, edit_config, snakemake

BASE = {"model": "mlp", "model_args": {"hidden": [8], "activation": "relu"}, "dataset": "digits",
        "loss": "cross_entropy", "epochs": 4, "batch_size": 32, "lr": 0.1, "eval_every": 2, "threads": 1}


def block(**over):
    b = {"train": dict(BASE), "fail_train_error": 0.5,
         "fig1": {"tau": 4, "lrs": [0.05, 0.1], "seeds": [0]},
         "fig13": {"epochs": [2, 4]},
         "fig3": {"taus": [2, 4], "lrs": [0.01, 0.1, 1.0], "seeds": [0, 1]}}
    b.update(over)
    return b


# ---------------------------------------------------------------- grids


def test_the_grids_hold_every_tau_lr_seed_and_tau0():
    b = block()
    fig3 = gen.runs(b, "fig3", BASE)
    assert len(fig3) == 3 * 3 * 2  # τ = 0 added to taus [2, 4]
    assert {r.axes["tau"] for r in fig3} == {0, 2, 4}
    assert fig3[0].name == "tau0/lr0.01/seed0" and fig3[0].spec["optimizer"]["delay"] == 0
    assert all(r.spec["epochs"] == 4 and r.spec["lr"] == r.axes["lr"] and r.spec["seed"] == r.axes["seed"] for r in fig3)
    fig1 = gen.runs(b, "fig1", BASE)
    assert [r.name for r in fig1] == ["tau0/lr0.05/seed0", "tau0/lr0.1/seed0", "tau4/lr0.05/seed0", "tau4/lr0.1/seed0"]
    assert gen.figures_of(b) == ["fig3", "fig1", "fig13"]
    groups = gen.ensemble_groups(fig3)
    assert sorted(groups) == [0, 2, 4] and all(len(g) == 6 for g in groups.values())
    assert len(list(gen.all_specs(b, BASE))) == 1 + 18 + 4  # the train block, then every run


def test_a_figure_train_block_overrides_the_base_and_batchnorm_batches_but_paper_networks_fall_back():
    """A quick BatchNorm stand-in batches (per-member BatchNorm, one ensemble per tau); a paper-scale
    network trains one run per job."""
    b = block(fig3={"taus": [4], "lrs": [0.1, 0.2], "seeds": [0], "train": {"model": "cnn_digits",
                                                                            "model_args": {"batchnorm": True}}})
    runs = gen.runs(b, "fig3", {k: v for k, v in BASE.items() if k != "model_args"})
    assert all(r.spec["model"] == "cnn_digits" for r in runs)
    groups = gen.ensemble_groups(runs)
    assert sorted(groups) == [0, 4] and sorted(len(g) for g in groups.values()) == [2, 2]
    b = block(fig3={"taus": [4], "lrs": [0.1, 0.2], "seeds": [0], "train": {"model": "resnet44", "dataset": "cifar10"}})
    runs = gen.runs(b, "fig3", {k: v for k, v in BASE.items() if k not in ("model_args", "dataset_args")})
    assert gen.ensemble_groups(runs) == {}


def test_fig13_epochs_must_be_evaluation_epochs():
    with pytest.raises(UserError, match="fig13.epochs: 3"):
        list(gen.all_specs(block(fig13={"epochs": [3]}), BASE))


def test_the_config_check_covers_the_runs():
    from delay_stability.experiments import config as config_check

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    config_check.check(cfg, yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text()))
    keys = [k for k, _ in config_check.training_specs(cfg, "quick") if k.startswith("generalization")]
    q = cfg["quick"]["generalization"]
    n3 = len(set([0, *q["fig3"]["taus"]])) * len(q["fig3"]["lrs"]) * len(q["fig3"]["seeds"])
    n1 = len({0, q["fig1"]["tau"]}) * len(q["fig1"]["lrs"]) * len(q["fig1"]["seeds"])
    assert len(keys) == 1 + ("train" in q["fig1"]) + ("train" in q["fig3"]) + n3 + n1
    paper = [s for k, s in config_check.training_specs(cfg, "paper") if k.startswith("generalization.fig3")]
    assert paper and all(s["model"] == "vgg11" for s in paper)


# ---------------------------------------------------------------- tables from run folders


def fake_run(root, tau, lr, seed, status, rows, epochs=4):
    """A run folder as train.run_training writes it: run.json (spec), summary.json, metrics.csv."""
    folder = os.path.join(root, f"tau{tau}", f"lr{lr:g}", f"seed{seed}")
    os.makedirs(folder)
    spec = {**BASE, "lr": lr, "seed": seed, "epochs": epochs, "optimizer": {"delay": tau, "workers": None}}
    files.write_json(os.path.join(folder, "run.json"), {"spec": spec})
    cols = ["epoch", "train_loss", "train_error", "val_loss", "val_error"]
    files.write_csv(os.path.join(folder, "metrics.csv"), cols, [dict(zip(cols, r)) for r in rows])
    final = dict(zip(cols, rows[-1]))
    files.write_json(os.path.join(folder, "summary.json"), {"status": status, "epochs_run": rows[-1][0], "final": final})
    return folder


def test_the_tables_from_hand_made_run_folders(tmp_path):
    root = str(tmp_path / "runs")
    a = fake_run(root, 0, 0.1, 0, "completed", [(0, 2.3, 0.9, 2.3, 0.9), (4, 0.1, 0.02, 0.2, 0.05)])
    b = fake_run(root, 4, 0.1, 0, "completed", [(0, 2.3, 0.9, 2.3, 0.9), (4, 1.5, 0.6, 1.6, 0.62)])
    c = fake_run(root, 4, 1.0, 0, "diverged", [(0, 2.3, 0.9, 2.3, 0.9), (2, float("nan"), 0.9, float("nan"), 0.9)])
    out = {k: str(tmp_path / f"{k}.csv") for k in ("fig3", "fig1", "claims", "fit")}
    assert cli_main(["generalization-collect", "--fig3-run", c, b, a, "--fig1-run", b, "--fail-train-error", "0.5",
                     *[x for k in out for x in (f"--{k}", out[k])]]) == 0
    rows = read_csv(out["fig3"])
    assert [(r["tau"], r["lr"], r["seed"], r["epochs"], r["status"], r["failed"], r["train_error"], r["val_error"],
             r["train_loss"], r["val_loss"]) for r in rows] == [
        ("0", "0.1", "0", "4", "completed", "False", "0.02", "0.05", "0.1", "0.2"),
        ("4", "0.1", "0", "4", "completed", "True", "0.6", "0.62", "1.5", "1.6"),   # train error 60% > 50%
        ("4", "1.0", "0", "4", "diverged", "True", "0.9", "0.9", "", ""),  # NaN: null in summary.json
    ]
    f1 = read_csv(out["fig1"])
    assert [(r["tau"], r["lr"], r["epoch"], r["val_error"], r["train_error"], r["status"]) for r in f1] == [
        ("4", "0.1", "0", "0.9", "0.9", "completed"), ("4", "0.1", "4", "0.62", "0.6", "completed")]
    claims = read_csv(out["claims"])
    assert [(r["tau"], r["eta_div"], r["best_lr"]) for r in claims] == [("0", "", "0.1"), ("4", "0.1", "0.1")]
    assert float(claims[1]["gap_points"]) == pytest.approx(57.0)


def test_the_claims_of_a_synthetic_grid_with_a_known_answer():
    # eta_div(τ) = 1/(1 + 2τ) exactly on the grid: 1/eta_div = 2τ + 1, R² = 1
    lrs = [0.05] + [1 / (1 + 2 * t) for t in (0, 1, 2, 4)] + [2.0]
    rows = []
    for tau in (0, 1, 2, 4):
        div = 1 / (1 + 2 * tau)
        below = max(lr for lr in lrs if lr < div - 1e-12)  # the best η: the largest that does not fail
        for lr in lrs:
            for seed in (0, 1):
                fails = lr >= div - 1e-12
                val = 0.9 if fails else (0.1 + 0.01 * tau if lr == below else 0.2)
                rows.append({"tau": tau, "lr": lr, "seed": seed, "val_error": val, "failed": fails})
    table, fit = gen.claims(rows)
    assert [r["eta_div"] for r in table] == pytest.approx([1.0, 1 / 3, 1 / 5, 1 / 9])
    assert fit["slope"] == pytest.approx(2.0) and fit["intercept"] == pytest.approx(1.0) and fit["r2"] == pytest.approx(1.0)
    eta0 = table[0]["best_lr"]
    assert eta0 == pytest.approx(1 / 3)  # the largest η below τ = 0's edge
    for r in table:
        assert r["eq8_lr"] == pytest.approx(math.pi * eta0 / (4 * (r["tau"] + 0.5)))
        assert r["alpha_star"] == pytest.approx(2 * math.sin(math.pi / (4 * r["tau"] + 2)))
        assert r["eta_div_over_alpha_star"] == pytest.approx(r["eta_div"] / r["alpha_star"])
    assert [r["gap_points"] for r in table] == pytest.approx([0.0, 1.0, 2.0, 4.0])


def test_half_the_seeds_failing_is_enough_and_no_failure_is_no_eta_div():
    rows = [{"tau": 0, "lr": lr, "seed": s, "val_error": 0.1, "failed": False} for lr in (0.1, 1.0) for s in (0, 1)]
    rows += [{"tau": 2, "lr": 0.1, "seed": 0, "val_error": 0.1, "failed": False},
             {"tau": 2, "lr": 0.1, "seed": 1, "val_error": 0.8, "failed": True},
             {"tau": 2, "lr": 1.0, "seed": 0, "val_error": 0.9, "failed": True},
             {"tau": 2, "lr": 1.0, "seed": 1, "val_error": 0.9, "failed": True}]
    table, fit = gen.claims(rows)
    assert table[0]["eta_div"] is None and table[1]["eta_div"] == 0.1
    assert fit["r2"] is None and fit["n_taus"] == 1
    with pytest.raises(UserError, match="τ = 0"):
        gen.claims([r for r in rows if r["tau"] == 2])


# ---------------------------------------------------------------- a real build


pytestmark_wf = pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake is not installed")


@pytestmark_wf
def test_a_tiny_fig3_builds_through_snakemake(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")

    def tiny(c):
        g = c["quick"]["generalization"]
        g["train"].update(model_args={"hidden": [8], "activation": "relu"}, dataset_args={"train_size": 200},
                          epochs=4, eval_every=2)
        g["fig3"] = {"taus": [4], "lrs": [0.05, 5.0], "seeds": [0, 1]}
        g["fig1"] = {"tau": 4, "lrs": [0.05, 0.5], "seeds": [0]}
        g["fig13"] = {"epochs": [2, 4]}

    edit_config(workdir, tiny)
    res = snakemake(workdir, "--cores", "2", "figures/fig3.pdf", "figures/fig13.pdf", timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    gdir = workdir / "results" / "quick" / "generalization"
    rows = read_csv(gdir / "fig3.csv")
    assert len(rows) == 2 * 2 * 2 and {r["tau"] for r in rows} == {"0", "4"}
    for r in rows:  # each member wrote its normal run folder
        assert json.loads((workdir / r["run"] / "run.json").read_text())["ensemble"]["members"] == 4
    assert len(read_csv(gdir / "claims.csv")) == 2 and (gdir / "fit.csv").exists()
    assert (workdir / "figures" / "fig3.png").stat().st_size > 0 and (workdir / "figures" / "fig13.pdf").exists()
    assert len(read_csv(gdir / "fig1.csv")) == 4 * 3  # 4 runs x epochs 0, 2, 4
