"""Table 1 (delay_stability.experiments.table1): the arms' specs against their closed forms, the SB
scan's best η, the accuracy of diverged runs, the table from run folders, and a tiny real build."""

import json
import math
import os

import pytest
import yaml

from delay_stability import files
from delay_stability.cli import main as cli_main
from delay_stability.errors import UserError
from delay_stability.experiments import table1 as t1
from delay_stability.experiments import table1_tables as t1_tables
from delay_stability.spec import validate_spec
from oracles import read_csv
from workflow_util import REPO, SNAKEMAKE, copy_workflow, edit_config, snakemake

TRAIN = {"model": "mlp", "model_args": {"hidden": [8], "activation": "relu"}, "dataset": "digits",
         "loss": "cross_entropy", "epochs": 10, "batch_size": 16, "lr": 0.05, "eval_every": 5, "threads": 1,
         "lr_schedule": {"kind": "step", "milestones": [4, 8], "gamma": 0.1, "warmup_epochs": 2}}


def block(**over):
    b = {"tau": 8, "lr_scaling": "sqrt", "seeds": [0, 1], "sb_lrs": [0.02, 0.05],
         "networks": [{"name": "net a", "train": dict(TRAIN), "large_batch": 64}]}
    b.update(over)
    return b


def test_the_arms_follow_their_closed_forms():
    b = block()
    net = b["networks"][0]
    sb = 0.07
    w = 64 // 16
    lb = sb * math.sqrt(w)
    rule = 2 * math.sin(math.pi / (4 * 8 + 2)) / 2  # α*(8)/α*(0), α*(τ) = 2 sin(π/(4τ+2))
    arms = {arm: t1.arm_specs(b, net, TRAIN, arm, sb) for arm in t1.ARMS}
    assert all(len(specs) == 2 and [s["seed"] for s in specs] == [0, 1] for specs in arms.values())
    got = {arm: (s[0]["lr"], s[0]["batch_size"], s[0]["optimizer"]["delay"], s[0]["epochs"]) for arm, s in arms.items()}
    assert got["SB"] == (pytest.approx(sb), 16, 0, 10)
    assert got["LB"] == (pytest.approx(lb), 64, 0, 10)
    assert got["ASGD"] == (pytest.approx(sb), 16, 8, 10)
    assert got["+LR"] == (pytest.approx(lb * rule), 16, 8, 10)
    assert got["+30%"] == (pytest.approx(lb * rule), 16, 8, 13)
    sched = arms["+30%"][0]["lr_schedule"]
    assert sched["milestones"] == [5, 10] and sched["warmup_epochs"] == 3  # stretched by 1.3, rounded
    assert arms["+30%"][0]["eval_every"] == 1  # 13 is not a multiple of 5: the last epoch is still evaluated
    linear = t1.arm_specs(block(lr_scaling="linear"), net, TRAIN, "LB", sb)
    assert linear[0]["lr"] == pytest.approx(sb * w)
    assert t1.arm_specs(block(extra_epochs=0.5), net, TRAIN, "+30%", sb)[0]["epochs"] == 15


def test_large_batch_must_be_a_multiple_of_the_batch():
    b = block(networks=[{"name": "n", "train": dict(TRAIN), "large_batch": 40}])
    with pytest.raises(UserError, match=r"table1.networks\[0\].large_batch: 40"):
        list(t1.all_specs(b, dict))
    with pytest.raises(UserError, match="used twice"):
        t1.networks(block(networks=[{"name": "n", "train": TRAIN, "large_batch": 32}] * 2))


def test_the_config_check_covers_every_arm_and_the_scan():
    from delay_stability.experiments import config as config_check

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    config_check.check(cfg, yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text()))
    q = cfg["quick"]["table1"]
    keys = [k for k, _ in config_check.training_specs(cfg, "quick") if k.startswith("table1")]
    per_net = 1 + len(q["sb_lrs"]) * len(q["seeds"]) + len(t1.ARMS) * len(q["seeds"])
    assert len(keys) == len(q["networks"]) * per_net
    paper = cfg["paper"]["table1"]
    assert "sb_lrs" not in paper and [n["name"] for n in paper["networks"]] == list(t1_tables.PAPER)


def test_the_best_sb_lr_is_the_lowest_mean_val_error():
    rows = [{"lr": 0.1, "val_error": 0.10}, {"lr": 0.1, "val_error": 0.30},   # mean 0.20
            {"lr": 0.2, "val_error": 0.15}, {"lr": 0.2, "val_error": 0.17},   # mean 0.16: best
            {"lr": 0.5, "val_error": 0.01}, {"lr": 0.5, "val_error": ""}]     # diverged seed: 100% error
    assert t1.best_lr(rows) == 0.2
    assert t1.best_lr([{"lr": 0.3, "val_error": 0.1}, {"lr": 0.1, "val_error": 0.1}]) == 0.1  # tie: smaller η


def fake_run(folder, spec, status, val_error):
    os.makedirs(folder)
    files.write_json(os.path.join(folder, "run.json"), {"spec": validate_spec(spec)})
    files.write_json(os.path.join(folder, "summary.json"), {"status": status, "final": {"val_error": val_error}})
    return folder


def test_the_table_from_hand_made_run_folders(tmp_path):
    spec = dict(TRAIN, lr=0.1, optimizer={"delay": 32})
    cifar100 = dict(spec, model="c3", model_args={}, dataset="cifar100", dataset_args={"root": str(tmp_path)})
    dirs = {("ResNet-44", "ASGD"): [fake_run(str(tmp_path / "a0"), spec, "completed", 0.2),
                                    fake_run(str(tmp_path / "a1"), spec, "completed", 0.1)],
            ("C3", "ASGD"): [fake_run(str(tmp_path / "c0"), cifar100, "diverged", None)]}
    records = []
    for (net, arm), runs in dirs.items():
        records.append(str(tmp_path / f"{net}.json"))
        files.write_json(records[-1], {"network": net, "arm": arm, "runs": runs})
    out, md = str(tmp_path / "table1.csv"), str(tmp_path / "table1.md")
    runs_csv = str(tmp_path / "table1_runs.csv")
    assert cli_main(["table1-collect", "--record", *records, "--table", out, "--markdown", md, "--runs", runs_csv]) == 0
    per_seed = read_csv(runs_csv)   # one row per run folder: what the claims ledger pairs by seed
    assert list(per_seed[0]) == list(t1_tables.RUN_COLUMNS)
    assert [(p["network"], p["arm"], p["status"]) for p in per_seed] == [
        ("ResNet-44", "ASGD", "completed"), ("ResNet-44", "ASGD", "completed"), ("C3", "ASGD", "diverged")]
    assert [float(p["val_accuracy"]) for p in per_seed] == pytest.approx([80.0, 90.0, 1.0])
    rows = read_csv(out)
    assert list(rows[0]) == list(t1_tables.TABLE_COLUMNS)
    r, c = rows
    assert (r["network"], r["arm"], r["tau"], r["seeds"], r["diverged"], r["paper"]) == ("ResNet-44", "ASGD", "32", "2", "0", "10.0")
    assert float(r["val_accuracy"]) == pytest.approx(85.0) and float(r["val_accuracy_std"]) == pytest.approx(math.sqrt(50))
    assert float(c["val_accuracy"]) == pytest.approx(1.0) and c["diverged"] == "1"  # chance on 100 classes
    text = open(md).read()
    assert "| ResNet-44 |" in text and "85.00 ± 7.07 (η 0.1)" in text and "paper 10.00" in text and "1/1 diverged" in text


def test_bad_arm_and_network_are_one_line_errors(tmp_path, capsys):
    args = ["table1-arm", "--block", json.dumps(block()), "--base", json.dumps(TRAIN), "--root", str(tmp_path),
            "--record", str(tmp_path / "r.json")]
    assert cli_main([*args, "--network", "net b", "--arm", "SB"]) == 2
    assert "--network: 'net b'" in capsys.readouterr().err
    assert cli_main([*args, "--network", "net a", "--arm", "XL"]) == 2
    assert "unknown arm 'XL'" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


@pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake is not installed")
def test_a_tiny_table1_builds_through_snakemake(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")

    def tiny(c):
        q = c["quick"]["table1"]
        train = dict(TRAIN, epochs=2, eval_every=1, dataset_args={"train_size": 128})
        del train["lr_schedule"]
        q.update(tau=2, seeds=[0, 1], sb_lrs=[0.05, 0.2], networks=[{"name": "tiny", "train": train, "large_batch": 32}])

    edit_config(workdir, tiny)
    res = snakemake(workdir, "--cores", "2", "figures/table1.pdf", timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    gdir = workdir / "results" / "quick" / "generalization"
    scan = read_csv(gdir / "table1" / "tiny" / "scan.csv")
    assert len(scan) == 4
    best = t1.best_lr(scan)
    rows = {r["arm"]: r for r in read_csv(gdir / "table1.csv")}
    assert list(rows) == list(t1.ARMS)
    assert float(rows["SB"]["lr"]) == best and float(rows["ASGD"]["lr"]) == best
    assert float(rows["LB"]["lr"]) == pytest.approx(best * math.sqrt(2)) and rows["LB"]["batch_size"] == "32"
    assert float(rows["+LR"]["lr"]) == pytest.approx(best * math.sqrt(2) * math.sin(math.pi / 10))
    assert rows["+30%"]["epochs"] == "3" and rows["ASGD"]["tau"] == "2"
    sb = json.loads((gdir / "table1" / "tiny" / "sb" / "arm.json").read_text())
    assert all("/scan/" in run for run in sb["runs"])  # SB's runs are the scan's at its best η
    for arm in ("LB", "ASGD", "+LR", "+30%"):
        rec = json.loads((gdir / "table1" / "tiny" / t1.ARM_SLUGS[arm] / "arm.json").read_text())
        for run in rec["runs"]:  # each arm's runs were trained with the arm's spec
            spec = json.loads((workdir / run / "run.json").read_text())["spec"]
            assert spec["lr"] == pytest.approx(float(rows[arm]["lr"])) and spec["epochs"] == int(rows[arm]["epochs"])
    assert (gdir / "table1.md").read_text().startswith("| network | SB | LB | ASGD | +LR | +30% |")
    assert (workdir / "figures" / "table1.png").stat().st_size > 0
