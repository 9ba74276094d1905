"""ImageNet under delay (figs. 5, 9): the arms' η and batch (closed forms), the dampened effective
step, the ImageFolder reader on real JPEG files, ResNet-50 on them (a few CPU steps, SIGKILL and
resume), the tables, and the paper-scale plan with its GPU resources."""

import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from delay_stability.experiments import imagenet as im
from delay_stability.spec import deep_merge
from delay_stability.train import run_training
from workflow_util import SNAKEMAKE, copy_workflow, snakemake

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())
PAPER = CONFIG["paper"]["imagenet"]


# ------------------------------------------------------------------ the arms


def test_paper_arms_follow_goyal_and_the_1_over_tau_rule():
    """η_eff = 0.1/(1-0.9) = 1 per 256; S-SGD: batch 8192, η = 32; A-SGD: η = 32/32 = 1; 1/√τ: 32/√32.
    Goyal's warm-up from η_eff to η: S-SGD starts at 1/32, A-SGD (η = η_eff) has no ramp. Shifted
    momentum and fig9 run the authors' W = 32 workers (staleness 31), fig9's Gaussian arm their rule."""
    runs = {name: r.spec for name, r in im.runs(PAPER, "fig5", PAPER["train"])}
    assert runs["S-SGD"]["batch_size"] == 32 * 256 and runs["S-SGD"]["lr"] == pytest.approx(32.0)
    assert runs["S-SGD"]["optimizer"]["delay"] == 0
    for name in ("standard momentum", "m = 0", "shifted momentum"):
        assert runs[name]["batch_size"] == 256 and runs[name]["lr"] == pytest.approx(1.0)
        assert runs[name]["optimizer"]["dampening"] is True
        assert runs[name]["optimizer"]["weight_decay_on"] == "weights"
    assert runs["standard momentum"]["optimizer"]["delay"] == 32 and runs["m = 0"]["optimizer"]["delay"] == 32
    shifted = runs["shifted momentum"]["optimizer"]
    assert (shifted["workers"], shifted["delay"], shifted["schedule"]) == (32, 31, "round_robin")
    assert runs["1/sqrt(tau)"]["lr"] == pytest.approx(32 / math.sqrt(32))
    assert [runs[n]["optimizer"]["variant"] for n in ("standard momentum", "m = 0", "shifted momentum")] == \
        ["momentum", "plain", "shifted"]
    assert runs["shifted momentum"]["lr_schedule"] == {"kind": "step", "milestones": [30, 60, 80], "gamma": 0.1,
                                                      "warmup_epochs": 5, "warmup_start": 1.0}
    assert runs["S-SGD"]["lr_schedule"]["warmup_start"] == pytest.approx(1 / 32)
    assert runs["1/sqrt(tau)"]["lr_schedule"]["warmup_start"] == pytest.approx(math.sqrt(32) / 32)
    fig9 = {name: r.spec for name, r in im.runs(PAPER, "fig9", PAPER["train"])}
    gaussian = fig9["gaussian"]["optimizer"]
    assert (gaussian["workers"], gaussian["delay"], gaussian["schedule"]) == (32, 31, "gaussian")
    assert fig9["constant"] == runs["shifted momentum"]  # one training for both figures
    assert fig9["gaussian"]["lr"] == pytest.approx(fig9["constant"]["lr"])
    assert json.loads(im.plot_options(PAPER, "fig9", PAPER["train"], "paper"))["gaussian_mean"] == 31


def test_dampened_momentum_moves_like_undampened_momentum_at_eta_times_1_minus_m():
    """With a constant gradient g, dampened momentum with η reaches the step η·g, as undampened
    momentum (torch SGD) with η(1 - m): the scaling behind every arm's η (appendix E)."""
    from delay_stability.asgd import DelayedSGD

    m, eta, steps = 0.9, 0.05, 400
    ours = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    ref = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = DelayedSGD([ours], lr=eta, momentum=m, variant="momentum", dampening=True)
    sgd = torch.optim.SGD([ref], lr=eta * (1 - m), momentum=m)
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    for w, o in ((ours, opt), (ref, sgd)):
        for _ in range(steps):
            before = w.detach().clone()
            w.grad = g.clone()
            o.step()
        assert torch.allclose(w.detach() - before, -eta * g, rtol=1e-9)
    assert torch.allclose(ours.detach(), ref.detach(), rtol=1e-9)


def test_named_arms_get_distinct_folders_and_a_bad_scaling_is_named():
    block = copy.deepcopy(CONFIG["quick"]["imagenet"])
    names = [r.name for _, r in im.runs(block, "fig5", block["train"])]
    arms = ["s-sgd", "standard-momentum", "m-0", "shifted-momentum", "1-sqrt-tau"]
    assert sorted(names) == sorted(f"{a}/seed{s}" for a in arms for s in block["fig5"]["seeds"])
    assert len(set(names)) == len(names) == 5 * len(block["fig5"]["seeds"])
    # fig9's constant delay with shifted momentum is fig5's shifted-momentum run of the same seed: one folder
    plan = im.planned(block, block["train"], "R")
    fig9 = {(name, spec["seed"]): folder for name, folder, spec in plan["fig9"]}
    for seed in block["fig9"]["seeds"]:
        shared = seed in block["fig5"]["seeds"]
        assert fig9[("constant", seed)] == (os.path.join("R", "fig5", "shifted-momentum", f"seed{seed}") if shared
                                            else os.path.join("R", "fig9", "constant", f"seed{seed}"))
    assert fig9[("gaussian", 0)] == os.path.join("R", "fig9", "gaussian", "seed0")
    block["fig5"]["runs"][1]["lr_scaling"] = "cubic"
    with pytest.raises(Exception, match="lr_scaling"):
        im.runs(block, "fig5", block["train"])


# ------------------------------------------------------------------ a real ImageFolder tree


def write_jpeg_tree(root, classes=3, train=4, val=2, size=(24, 20)):
    """train/<class>/*.JPEG and val/<class>/*.JPEG, real JPEG files (PIL), a colour per class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            folder = Path(root) / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.zeros((size[1], size[0], 3), np.uint8)
                base[..., c % 3] = 180
                image = np.clip(base + rng.integers(0, 60, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(image, "RGB").save(folder / f"img_{i}.JPEG", format="JPEG", quality=90)
    return str(root)


def resnet50_spec(root, **over):
    spec = {"model": "resnet50", "model_args": {"num_classes": 3}, "dataset": "imagenet",
            "dataset_args": {"root": root, "workers": 2, "image_size": 32, "prefetch": 2}, "augment": True,
            "epochs": 2, "batch_size": 4, "lr": 0.05, "eval_every": 1, "checkpoint_every": 1, "device": "cpu",
            "threads": 2, "lr_schedule": {"kind": "step", "milestones": [1], "gamma": 0.1, "warmup_epochs": 1},
            "optimizer": {"delay": 2, "variant": "shifted", "momentum": 0.9, "weight_decay": 1e-4},
            "performance": {"channels_last": True, "bf16": True, "compile": True}}
    return deep_merge(spec, over)


def test_image_folder_reads_real_jpegs_with_persistent_workers_and_seeded_augmentation(tmp_path):
    """Every image once per epoch, the class of its folder, augmentation a function of the data
    generator only: the same batches with 0 or 2 workers, and another epoch's draw differs."""
    from delay_stability.data import load_dataset

    root = write_jpeg_tree(tmp_path / "tree")
    epochs = {}
    for workers in (0, 2):
        spec = resnet50_spec(root, dataset_args={"workers": workers})
        data = load_dataset(spec, "cpu")
        assert (data.num_train, data.num_val, data.num_classes) == (12, 6, 3)
        g = torch.Generator().manual_seed(5)
        epochs[workers] = [list(data.train_batches(4, shuffle=True, generator=g)) for _ in range(2)]
        if workers:
            loader, _ = data.loader(data._train, 4)
            assert loader.persistent_workers and loader.num_workers == 2
    for a, b in zip(epochs[0], epochs[2]):
        for (xa, ya), (xb, yb) in zip(a, b):
            assert xa.shape == (4, 3, 32, 32) and torch.equal(xa, xb) and torch.equal(ya, yb)
    labels = torch.cat([y for _, y in epochs[0][0]])
    assert sorted(labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert not torch.equal(epochs[0][0][0][0], epochs[0][1][0][0])


def test_resnet50_trains_a_few_steps_on_the_jpeg_tree(tmp_path):
    """torchvision's ResNet-50 with the paper's code path: DataLoader workers, random-resized crops,
    A-SGD (τ = 1), warm-up, weight decay, performance flags (the CPU ignores them)."""
    root = write_jpeg_tree(tmp_path / "tree")
    spec = resnet50_spec(root, epochs=1, batch_size=6, lr_schedule={"milestones": []})
    spec["optimizer"] = {"delay": 1, "weight_decay": 1e-4}
    summary = run_training(spec, str(tmp_path / "run"))
    assert summary["status"] == "completed" and summary["steps"] == 2 and summary["mean_staleness"] == 0.5
    rows = im.files.read_csv(str(tmp_path / "run" / "metrics.csv"), "metrics")
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.025, 0.05])  # warm-up: (step + 1)/2 of η
    assert all(math.isfinite(float(r["val_loss"])) for r in rows)
    rec = json.loads((tmp_path / "run" / "run.json").read_text())
    assert rec["performance"] == {"channels_last": False, "bf16": False, "compile": False}  # CPU: all off


def test_the_image_folder_run_resumes_after_sigkill_bit_for_bit(tmp_path):
    """A run streamed from the JPEG tree (2 persistent workers, augmentation, shifted momentum with
    τ = 2, warm-up then a step) killed with SIGKILL after its first checkpoint and run again ends
    equal to an uninterrupted run: metrics and weights (a small network keeps the test short; the
    ResNet-50 code path is the one above)."""
    from test_faults import kill_tree

    root = write_jpeg_tree(tmp_path / "tree")
    spec = resnet50_spec(root, model="resnet_digits", epochs=3)
    spec["model_args"] = {"in_channels": 3, "num_classes": 3, "width": 4}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "delay_stability.cli", "train", "--spec", str(spec_file), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.005)
    kill_tree(proc)
    assert not (out / "final.pt").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    whole = run_training(spec, str(tmp_path / "whole"))
    assert whole["status"] == "completed" and whole["epochs_run"] == 3
    rec = json.loads((out / "run.json").read_text())
    assert len(rec["resumed"]) == 1 and 1 <= rec["resumed"][0]["epoch"] < 3
    cols = ("epoch", "step", "lr", "train_loss", "train_error", "val_loss", "val_error")
    mine = [{c: r[c] for c in cols} for r in im.files.read_csv(str(out / "metrics.csv"), "m")]
    ref = [{c: r[c] for c in cols} for r in im.files.read_csv(str(tmp_path / "whole" / "metrics.csv"), "m")]
    assert mine == ref
    # warm-up over epoch 1 (3 steps; the row shows its last step, at the full η), then x0.1 from epoch 2
    assert [float(r["lr"]) for r in mine[1:]] == pytest.approx([0.05, 0.005, 0.005])
    a = torch.load(out / "final.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "whole" / "final.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ the tables


def test_tables_name_the_arms_and_read_every_run(tmp_path):
    """Two short runs of the quick stand-in (MNIST-1D, 64 training signals) collected into fig5.csv / fig5_curves.csv."""
    block = copy.deepcopy(CONFIG["quick"]["imagenet"])
    block["train"] = deep_merge(block["train"], {"epochs": 2, "dataset_args": {"num_samples": 80},
                                                 "lr_schedule": {"milestones": [1], "warmup_epochs": 0}})
    block["fig5"]["runs"] = block["fig5"]["runs"][:2]
    block["fig5"]["seeds"] = [0]
    named = im.planned(block, block["train"], tmp_path)["fig5"]
    for _, folder, spec in named:
        run_training(spec, folder)
    pairs = json.loads(im.runs_json(named))
    rows = im.write_tables(pairs, "fig5", str(tmp_path / "fig5.csv"), str(tmp_path / "fig5_curves.csv"),
                           str(tmp_path / "fig5_staleness.csv"))
    hist = im.files.read_csv(str(tmp_path / "fig5_staleness.csv"), "staleness")
    steps = json.loads(Path(named[1][1], "summary.json").read_text())["steps"]
    ssgd = [(int(h["staleness"]), int(h["count"])) for h in hist if h["arm"] == "S-SGD"]
    assert len(ssgd) == 1 and ssgd[0][0] == 0  # synchronous: staleness 0 only
    delayed = [(int(h["staleness"]), int(h["count"])) for h in hist if h["arm"] == "standard momentum"]
    assert delayed == [(k, 1) for k in range(min(steps, 8))] + ([(8, steps - 8)] if steps > 8 else [])  # tau = 8
    assert sum(c for _, c in delayed) == steps
    assert [r["variant"] for r in rows] == ["S-SGD", "standard momentum"]
    header = (tmp_path / "fig5.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["variant", "seed", "lr", "final_val_error", "final_train_error", "status"]
    for r, (_, folder, spec) in zip(rows, named):
        summary = json.loads(Path(folder, "summary.json").read_text())
        assert r["final_val_error"] == summary["final"]["val_error"] and r["lr"] == spec["lr"]
    curves = im.files.read_csv(str(tmp_path / "fig5_curves.csv"), "curves")
    assert len(curves) == 2 * 3 and {c["variant"] for c in curves} == {"S-SGD", "standard momentum"}


# ------------------------------------------------------------------ the paper-scale plan


@pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake is not installed")
def test_paper_scale_plan_of_fig5_asks_a_gpu_per_training_job(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    result = snakemake(workdir, "-n", "figures/fig5.pdf", "--config", "scale=paper", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    jobs = text.split("rule train:")[1:]
    assert len(jobs) == 5
    assert all("gpu=1" in job.split("rule ")[0] for job in jobs)
    for arm in ("s-sgd", "standard-momentum", "m-0", "shifted-momentum", "1-sqrt-tau"):
        assert f"results/paper/imagenet/fig5/{arm}/seed0" in text


def test_fig9_gaussian_arm_is_the_authors_worker_rule_and_its_histogram_is_drawn(tmp_path):
    """fig9's arms (quick block, shrunk): the Gaussian arm runs M workers under the authors' rule
    (mean staleness M - 1, the constant arm's staleness), its histogram reaches fig9_staleness.csv
    and the figure draws it beside appendix C's N(τ, 1)."""
    from delay_stability.plots import plot_figure

    block = copy.deepcopy(CONFIG["quick"]["imagenet"])
    block["train"] = deep_merge(block["train"], {"epochs": 2, "dataset_args": {"num_samples": 400},
                                                 "lr_schedule": {"milestones": [1], "warmup_epochs": 1}})
    block["fig9"]["seeds"] = [0]
    named = im.planned(block, block["train"], tmp_path)["fig9"]
    for _, folder, spec in named:
        run_training(spec, folder)
    paths = im.figure_tables("fig9", tmp_path)
    im.write_tables(json.loads(im.runs_json(named)), "fig9", paths["fig9"], paths["fig9_curves"],
                    paths["fig9_staleness"])
    hist = im.files.read_csv(paths["fig9_staleness"], "staleness")
    M = block["workers"]
    for arm in ("constant", "gaussian"):
        counts = {int(h["staleness"]): int(h["count"]) for h in hist if h["arm"] == arm}
        total = sum(counts.values())
        mean = sum(k * c for k, c in counts.items()) / total
        summary = json.loads(Path(dict((n, f) for n, f, _ in named)[arm], "summary.json").read_text())
        assert total == summary["steps"] and mean == pytest.approx(summary["mean_staleness"], rel=1e-12)
        if arm == "constant":  # round robin over M workers: staleness 0..M-2 once (all start at w_0), then M - 1
            assert counts == {**{k: 1 for k in range(M - 1)}, M - 1: total - (M - 1)}
        assert abs(mean - (M - 1)) < 1.0  # every gradient lands once: mean staleness M - 1 (warm-up aside)
    assert len({int(h["staleness"]) for h in hist if h["arm"] == "gaussian"}) > 3  # a real spread
    opts = json.loads(im.plot_options(block, "fig9", block["train"], "quick"))
    assert opts["gaussian_mean"] == M - 1
    out = tmp_path / "fig9.pdf"
    plot_figure("fig9", list(paths.values()), str(out), scale="quick", options=opts)
    assert out.stat().st_size > 1000
