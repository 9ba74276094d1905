"""The grid engine (delay_stability.experiments.grid): expansion into named runs, validation, and
the tidy tables collected from run folders (hand-written ones, and one tiny real grid)."""

import argparse
import copy
import csv
import json
import os
import re
import sys

import pytest

from delay_stability.errors import UserError
from delay_stability.experiments import grid

BASE = {"model": "mlp", "model_args": {"hidden": [8]}, "dataset": "digits", "dataset_args": {"train_size": 64},
        "epochs": 2, "batch_size": 16, "lr": 0.05, "eval_every": 1, "threads": 1}
METRICS = ("epoch", "step", "lr", "train_loss", "train_error", "val_loss", "val_error",
           "weight_norm", "dist_from_init", "mean_staleness", "seconds")


def read_table(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


# ================================================================ value tags and expansion


@pytest.mark.parametrize("value, tag", [
    (8, "8"), (0, "0"), (0.05, "0.05"), (1e-05, "1e-05"), (2.0, "2"), (0.9, "0.9"), (True, "true"),
    (False, "false"), ("shifted", "shifted"), ("round_robin", "round_robin"), (None, "none"),
    ({"kind": "gaussian", "mean": 8}, "gaussian-8"), ({"low": 0, "kind": "uniform", "high": 16}, "uniform-16-0"),
    ({"kind": "probs", "probs": [0.5, 0.5]}, "probs-0.5-0.5"),
])
def test_value_tag(value, tag):
    assert grid.value_tag(value) == tag


@pytest.mark.parametrize("value", ["a/b", "", "two words", "..\\x", object(), {}])
def test_value_tag_rejects(value):
    with pytest.raises(UserError):
        grid.value_tag(value)


def test_expand_product_order_and_names():
    runs = grid.expand(BASE, {"tau": [0, 8], "lr": [0.05, 0.1, 1e-05], "seed": [0, 1]})
    assert len(runs) == 2 * 3 * 2
    assert runs[0].name == "tau0/lr0.05/seed0"
    assert runs[1].name == "tau0/lr0.05/seed1"
    assert runs[2].name == "tau0/lr0.1/seed0"
    assert runs[6].name == "tau8/lr0.05/seed0"
    assert runs[-1].name == "tau8/lr1e-05/seed1"
    assert [(r.axes["tau"], r.axes["lr"], r.axes["seed"]) for r in runs] == [
        (t, lr, s) for t in (0, 8) for lr in (0.05, 0.1, 1e-05) for s in (0, 1)]
    assert list(runs[0].axes) == ["tau", "lr", "seed"]
    assert len({r.name for r in runs}) == len(runs)
    assert runs[6].folder("/root/g") == os.path.join("/root/g", "tau8/lr0.05/seed0")


def test_expand_sets_nested_keys_and_keeps_base():
    base = copy.deepcopy(BASE)
    base["optimizer"] = {"weight_decay": 1e-4}
    frozen = copy.deepcopy(base)
    runs = grid.expand(base, {"tau": [8], "momentum": [0.5], "variant": ["shifted"]},
                       overrides={"epochs": 5, "model_args": {"activation": "tanh"}})
    assert base == frozen
    (run,) = runs
    assert run.name == "tau8/momentum0.5/variantshifted"
    assert run.spec["optimizer"] == {"weight_decay": 1e-4, "delay": 8, "momentum": 0.5, "variant": "shifted"}
    assert run.spec["epochs"] == 5
    assert run.spec["model_args"] == {"hidden": [8], "activation": "tanh"}
    assert run.spec["lr"] == 0.05
    # no optimizer section in the base: it is created
    (run,) = grid.expand(BASE, {"tau": [{"kind": "gaussian", "mean": 8}]})
    assert run.name == "taugaussian-8"
    assert run.spec["optimizer"] == {"delay": {"kind": "gaussian", "mean": 8}}
    assert "optimizer" not in BASE
    # the runs do not share nested dicts with each other
    a, b = grid.expand(base, {"seed": [0, 1]})
    a.spec["optimizer"]["delay"] = 3
    assert "delay" not in b.spec["optimizer"] and base == frozen


def test_expand_validation_names_run_and_key():
    with pytest.raises(UserError, match=r"grid run tau0/lr0: spec key 'lr'"):
        grid.expand(BASE, {"tau": [0], "lr": [0.05, 0]})
    with pytest.raises(UserError, match=r"grid run momentum0.9: spec key 'optimizer.variant'"):
        grid.expand(BASE, {"momentum": [0.9]})
    with pytest.raises(UserError, match=r"grid run variantplain/momentum0.5: .*optimizer.variant"):
        grid.expand(BASE, {"variant": ["momentum", "plain"], "momentum": [0.5]})
    runs = grid.expand(BASE, {"lr": [0]}, validate=False)
    assert runs[0].spec["lr"] == 0


def test_expand_axis_errors():
    with pytest.raises(UserError, match=r"unknown grid axis 'delay'.*tau, lr, seed"):
        grid.expand(BASE, {"delay": [1]})
    with pytest.raises(UserError, match=r"grid axis 'lr' is empty"):
        grid.expand(BASE, {"tau": [0], "lr": []})
    with pytest.raises(UserError, match=r"grid axis 'seed'.*twice"):
        grid.expand(BASE, {"seed": [0, 1, 0]})
    with pytest.raises(UserError, match=r"grid axis 'lr'.*folder name lr0.123457"):
        grid.expand(BASE, {"lr": [0.1234567, 0.1234568]})


def test_expand_named():
    points = [{"tau": 0, "lr": 0.1}, {"lr": 0.05, "tau": 8}, {"tau": 16, "lr": 0.025}]
    runs = grid.expand_named(BASE, points, overrides={"seed": 3})
    assert [r.name for r in runs] == ["tau0/lr0.1", "tau8/lr0.05", "tau16/lr0.025"]
    assert list(runs[1].axes) == ["tau", "lr"]
    assert [(r.spec["optimizer"]["delay"], r.spec["lr"], r.spec["seed"]) for r in runs] == [
        (0, 0.1, 3), (8, 0.05, 3), (16, 0.025, 3)]
    with pytest.raises(UserError, match="expected the axes tau, lr"):
        grid.expand_named(BASE, [{"tau": 0, "lr": 0.1}, {"tau": 1}])
    with pytest.raises(UserError, match="twice"):
        grid.expand_named(BASE, [{"tau": 0}, {"tau": 0}])
    with pytest.raises(UserError, match="no points"):
        grid.expand_named(BASE, [])
    with pytest.raises(UserError, match=r"grid run tau0/lr-1: spec key 'lr'"):
        grid.expand_named(BASE, [{"tau": 0, "lr": -1}])
    with pytest.raises(UserError, match="unknown grid axis 'beta'"):
        grid.expand_named(BASE, [{"beta": 0}])


def test_no_heavy_imports():
    # numpy comes in through spec -> theory (VARIANTS); grid itself imports none of the three
    code = ("import sys; from delay_stability.experiments import grid; "
            "print(sorted({'torch', 'matplotlib'} & set(sys.modules)))")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    with open(grid.__file__) as f:
        imports = [line for line in f if line.startswith(("import ", "from "))]
    assert not [line for line in imports if re.search(r"\b(torch|numpy|matplotlib)\b", line)]


# ================================================================ collecting hand-written run folders


def write_run(folder, *, spec=None, final=None, status="completed", rows=2, header=METRICS):
    os.makedirs(folder, exist_ok=True)
    final = final if final is not None else {c: 0.25 for c in METRICS}
    summary = {"status": status, "epochs_run": rows - 1, "steps": 4 * (rows - 1), "final": final,
               "diverged": status == "diverged", "diverged_epoch": None, "escaped": None,
               "epochs_to_escape": None, "seconds": 1.0}
    with open(os.path.join(folder, "summary.json"), "w") as f:
        json.dump(summary, f)
    with open(os.path.join(folder, "metrics.csv"), "w") as f:
        f.write(",".join(header) + "\n")
        for i in range(rows):
            f.write(",".join(["%d" % i, "%d" % (4 * i), "0.05", "2.302585092994046", "0.9", "nan", "0.875",
                              "1.0000000000000002", "0.0", "0.0", "%.3f" % (0.5 * i)][:len(header)]) + "\n")
    if spec is not None:
        with open(os.path.join(folder, "run.json"), "w") as f:
            json.dump({"spec": spec, "seed": spec.get("seed")}, f)


def test_collect_exact_rows(tmp_path):
    runs = grid.expand(BASE, {"tau": [0, 8], "seed": [0]})
    write_run(runs[0].folder(tmp_path), final={**{c: 0.5 for c in METRICS}, "train_loss": 0.125,
                                               "val_error": 0.3, "seconds": 2.5})
    write_run(runs[1].folder(tmp_path), status="diverged", rows=1,
              final={**{c: None for c in METRICS}, "val_error": 0.9})
    summary, metrics = grid.collect(runs, tmp_path)
    assert summary == [
        {"tau": 0, "seed": 0, "run": os.path.join(str(tmp_path), "tau0/seed0"), "status": "completed",
         "epochs_run": 1, "steps": 4, "diverged": False, "escaped": None, "epochs_to_escape": None,
         "final_train_loss": 0.125, "final_train_error": 0.5, "final_val_loss": 0.5, "final_val_error": 0.3,
         "seconds": 2.5},
        {"tau": 8, "seed": 0, "run": os.path.join(str(tmp_path), "tau8/seed0"), "status": "diverged",
         "epochs_run": 0, "steps": 0, "diverged": True, "escaped": None, "epochs_to_escape": None,
         "final_train_loss": None, "final_train_error": None, "final_val_loss": None, "final_val_error": 0.9,
         "seconds": None},
    ]
    assert len(metrics) == 3
    assert metrics[1] == {"tau": 0, "seed": 0, "epoch": "1", "step": "4", "lr": "0.05",
                          "train_loss": "2.302585092994046", "train_error": "0.9", "val_loss": "nan",
                          "val_error": "0.875", "weight_norm": "1.0000000000000002", "dist_from_init": "0.0",
                          "mean_staleness": "0.0", "seconds": "0.500"}
    assert metrics[2]["tau"] == 8 and metrics[2]["epoch"] == "0"


def test_write_tables_bit_for_bit(tmp_path):
    runs = grid.expand(BASE, {"lr": [0.05, 0.1], "tau": [{"kind": "gaussian", "mean": 8}]})
    for run in runs:
        write_run(run.folder(tmp_path / "g"))
    grid.write_tables(runs, tmp_path / "g", tmp_path / "s.csv", tmp_path / "m.csv")
    header, rows = read_table(tmp_path / "s.csv")
    assert header == ["lr", "tau", *grid.SUMMARY_COLUMNS]
    assert [(r["lr"], r["tau"], r["status"], r["final_val_loss"], r["escaped"]) for r in rows] == [
        ("0.05", "gaussian-8", "completed", "0.25", ""), ("0.1", "gaussian-8", "completed", "0.25", "")]
    header, rows = read_table(tmp_path / "m.csv")
    # the metrics column lr is renamed: the axis column lr keeps its name
    assert header == ["lr", "tau", "epoch", "step", "metrics_lr", *METRICS[3:]]
    assert len(rows) == 4
    with open(runs[0].folder(tmp_path / "g") + "/metrics.csv") as f:
        first = f.read().splitlines()[1].split(",")
    assert list(rows[0].values())[2:] == first


def test_collect_missing_files(tmp_path):
    runs = grid.expand(BASE, {"seed": [0, 1]})
    write_run(runs[0].folder(tmp_path))
    write_run(runs[1].folder(tmp_path))
    os.remove(os.path.join(runs[1].folder(tmp_path), "metrics.csv"))
    with pytest.raises(UserError, match=r"metrics.csv not found: .*seed1/metrics.csv"):
        grid.collect(runs, tmp_path)
    os.remove(os.path.join(runs[1].folder(tmp_path), "summary.json"))
    with pytest.raises(UserError, match=r"summary.json not found: .*seed1/summary.json"):
        grid.collect(runs, tmp_path)


def test_write_tables_header_mismatch(tmp_path):
    runs = grid.expand(BASE, {"seed": [0, 1]})
    write_run(runs[0].folder(tmp_path))
    write_run(runs[1].folder(tmp_path), header=METRICS[:-1])
    with pytest.raises(UserError, match=r"seed1/metrics.csv"):
        grid.write_tables(runs, tmp_path, tmp_path / "s.csv", tmp_path / "m.csv")
    assert not os.path.exists(tmp_path / "s.csv")


def cli(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    grid.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_grid_collect_cli(tmp_path, capsys):
    runs = grid.expand(BASE, {"tau": [0, 4], "momentum": [0.5]}, overrides={"optimizer": {"variant": "shifted"}})
    folders = []
    for run in runs:
        write_run(run.folder(tmp_path), spec=run.spec, rows=3)
        folders.append(run.folder(tmp_path))
    s, m = str(tmp_path / "s.csv"), str(tmp_path / "m.csv")
    assert cli(["grid-collect", "--run", *folders, "--axis", "tau", "--axis", "variant",
                "--summary", s, "--metrics", m]) == 0
    assert capsys.readouterr().out.strip() == f"{s}: 2 runs; {m}: 6 rows"
    header, rows = read_table(s)
    assert header == ["tau", "variant", *grid.SUMMARY_COLUMNS]
    assert [(r["tau"], r["variant"], r["run"]) for r in rows] == [("0", "shifted", folders[0]),
                                                                  ("4", "shifted", folders[1])]
    header, rows = read_table(m)
    assert header == ["tau", "variant", *METRICS]
    assert [(r["tau"], r["epoch"]) for r in rows] == [("0", "0"), ("0", "1"), ("0", "2"),
                                                      ("4", "0"), ("4", "1"), ("4", "2")]
    summary, _ = grid.collect_folders(folders, ["momentum", "lr"])
    assert [(r["momentum"], r["lr"]) for r in summary] == [(0.5, 0.05), (0.5, 0.05)]
    with pytest.raises(UserError, match="unknown grid axis 'nope'"):
        cli(["grid-collect", "--run", folders[0], "--axis", "nope", "--summary", s, "--metrics", m])
    with pytest.raises(UserError, match=r"run.json not found"):
        cli(["grid-collect", "--run", str(tmp_path), "--summary", s, "--metrics", m])


def test_grid_collect_in_main_cli(tmp_path, capsys):
    from delay_stability import cli as main_cli

    run = grid.expand(BASE, {"seed": [2]})[0]
    write_run(run.folder(tmp_path), spec=run.spec)
    s, m = str(tmp_path / "s.csv"), str(tmp_path / "m.csv")
    assert main_cli.main(["grid-collect", "--run", run.folder(tmp_path), "--axis", "seed",
                          "--summary", s, "--metrics", m]) == 0
    assert read_table(s)[1][0]["seed"] == "2"
    assert main_cli.main(["grid-collect", "--run", str(tmp_path / "none"), "--summary", s, "--metrics", m]) == 2
    assert "run.json not found" in capsys.readouterr().err


# ================================================================ end to end: a tiny real grid


def test_tiny_real_grid(tmp_path):
    pytest.importorskip("torch")
    from delay_stability import train

    runs = grid.expand(BASE, {"tau": [0, 2], "seed": [0, 1]})
    for run in runs:
        train.run_training(run.spec, run.folder(tmp_path))
    summary, metrics = grid.collect(runs, tmp_path)
    assert [(r["tau"], r["seed"]) for r in summary] == [(0, 0), (0, 1), (2, 0), (2, 1)]
    for run, row in zip(runs, summary):
        with open(os.path.join(run.folder(tmp_path), "summary.json")) as f:
            record = json.load(f)
        assert row["final_val_error"] == record["final"]["val_error"]
        assert row["final_train_loss"] == record["final"]["train_loss"]
        assert row["status"] == record["status"] and row["epochs_run"] == 2
    assert summary[0]["final_train_loss"] != summary[1]["final_train_loss"]
    assert summary[2]["final_train_loss"] != summary[3]["final_train_loss"]
    assert len(metrics) == 4 * 3  # row 0 (starting weights) and one per epoch
    grid.write_tables(runs, tmp_path, tmp_path / "s.csv", tmp_path / "m.csv")
    _, rows = read_table(tmp_path / "m.csv")
    with open(os.path.join(runs[3].folder(tmp_path), "metrics.csv")) as f:
        own = list(csv.DictReader(f))
    assert [r["train_loss"] for r in rows[9:]] == [r["train_loss"] for r in own]
