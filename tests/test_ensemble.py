"""The ensemble engine: member r of run_ensemble ends as run_training(specs[r]) (float64 to 1e-10,
float32 to 1e-5, weights and every metric), divergence of one member, refusals with a reason,
resume after SIGKILL bit-for-bit, and run folders the rest of the package reads."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from delay_stability.asgd import has_in_flight
from delay_stability.ensemble import can_ensemble, run_ensemble
from delay_stability.errors import UserError
from delay_stability.train import load_checkpoint, model_from_checkpoint, read_metrics, run_training

METRICS = ("epoch", "step", "lr", "train_loss", "train_error", "val_loss", "val_error", "weight_norm",
           "dist_from_init", "mean_staleness")


def base(**overrides):
    spec = dict(model="mlp", model_args={"hidden": [32]}, dataset="digits", dataset_args={"train_size": 256},
                dtype="float64", device="cpu", threads=1, epochs=4, batch_size=32, eval_every=2, lr=0.05,
                optimizer={"delay": 3})
    spec.update(overrides)
    return spec


def members(tau, **overrides):
    """Four members that differ in lr, seed, variant, momentum and weight decay."""
    b = base(**overrides)
    return [
        dict(b, lr=0.05, seed=1, optimizer={"delay": tau}),
        dict(b, lr=0.1, seed=2, optimizer={"delay": tau, "variant": "momentum", "momentum": 0.9}),
        dict(b, lr=0.2, seed=3, optimizer={"delay": tau, "variant": "shifted", "momentum": 0.5, "weight_decay": 1e-3}),
        dict(b, lr=0.03, seed=4, optimizer={"delay": tau, "weight_decay": 1e-2}),
    ]


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def compare(ens_dir, single_dir, tol):
    """Max relative difference of every metric and of the final weights (asserted <= tol)."""
    a, b = read_metrics(os.path.join(ens_dir, "metrics.csv")), read_metrics(os.path.join(single_dir, "metrics.csv"))
    assert len(a) == len(b)
    worst = 0.0
    for ra, rb in zip(a, b):
        for k in METRICS:
            if ra[k] is None or rb[k] is None or k in ("epoch", "step"):
                assert ra[k] == rb[k], (k, ra[k], rb[k])
            elif rb[k] != rb[k]:  # NaN
                assert ra[k] != ra[k], k
            else:
                worst = max(worst, rel(ra[k], rb[k]))
    wa, wb = load_checkpoint(os.path.join(ens_dir, "final.pt"))["model"], load_checkpoint(os.path.join(single_dir, "final.pt"))["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        if not wb[k].is_floating_point():  # BatchNorm's num_batches_tracked
            assert torch.equal(wa[k], wb[k]), k
        elif torch.isfinite(wb[k]).all():
            worst = max(worst, float((wa[k] - wb[k]).norm() / wb[k].norm().clamp_min(1e-300)))
    assert worst <= tol, worst
    sa = json.load(open(os.path.join(ens_dir, "summary.json")))
    sb = json.load(open(os.path.join(single_dir, "summary.json")))
    for k in ("status", "epochs_run", "steps", "diverged", "diverged_epoch", "optimizer_buffer_bytes"):
        assert sa[k] == sb[k], k
    assert rel(sa["mean_staleness"], sb["mean_staleness"]) < 1e-12 if sb["mean_staleness"] == sb["mean_staleness"] else True
    assert rel(sa["initial_train_loss"], sb["initial_train_loss"]) <= tol
    return worst


def check_against_single(tmp_path, specs, tol):
    outs = [str(tmp_path / f"e{i}") for i in range(len(specs))]
    summaries = run_ensemble(specs, outs, final_in_flight=True)  # final.pt with its in-flight buffers, compared below
    assert len(summaries) == len(specs)
    worst = 0.0
    for i, spec in enumerate(specs):
        single = str(tmp_path / f"s{i}")
        run_training(spec, single, final_in_flight=True)
        worst = max(worst, compare(outs[i], single, tol))
    return outs, worst


@pytest.mark.parametrize("batch_size", [32, 0], ids=["minibatch", "fullbatch"])
@pytest.mark.parametrize("tau", [0, 3])
def test_members_equal_their_single_runs_float64(tmp_path, tau, batch_size):
    check_against_single(tmp_path, members(tau, batch_size=batch_size), 1e-10)


def test_cnn_digits_members_equal_their_single_runs(tmp_path):
    specs = members(3, model="cnn_digits", model_args={"batchnorm": False, "channels": [4, 8], "hidden": 16}, epochs=3)
    check_against_single(tmp_path, specs, 1e-10)


def test_float32_members_within_1e_5(tmp_path):
    check_against_single(tmp_path, members(3, dtype="float32", epochs=3), 1e-5)


def test_mse_and_lr_schedule(tmp_path):
    specs = members(2, loss="mse", epochs=4, lr_schedule={"kind": "step", "milestones": [2], "gamma": 0.5, "warmup_epochs": 1})
    check_against_single(tmp_path, specs, 1e-10)


@pytest.mark.parametrize("batch_size", [32, 0], ids=["minibatch", "fullbatch"])
def test_a_diverging_member_is_recorded_and_the_others_go_on(tmp_path, batch_size):
    specs = members(1, batch_size=batch_size, epochs=8, eval_every=3)
    specs[1] = dict(specs[1], lr=0.1, optimizer={"delay": 1})
    specs[1]["lr"] = 500.0
    outs, _ = check_against_single(tmp_path, specs, 1e-10)
    diverged = json.load(open(os.path.join(outs[1], "summary.json")))
    assert diverged["status"] == "diverged" and diverged["diverged_epoch"] < 8
    for i in (0, 2, 3):
        assert json.load(open(os.path.join(outs[i], "summary.json")))["status"] == "completed"


def test_a_member_stopped_by_the_nan_check_inside_an_epoch(tmp_path):
    """Minibatch: a non-finite step loss at a multiple of NAN_CHECK_EVERY ends that member's epoch early."""
    specs = members(1, loss="mse", epochs=20, eval_every=3)
    specs[1] = dict(specs[1], lr=100.0, optimizer={"delay": 1}, stop={"divergence": {"loss_factor": 1e300}})
    outs, _ = check_against_single(tmp_path, specs, 1e-10)
    diverged = json.load(open(os.path.join(outs[1], "summary.json")))
    assert diverged["status"] == "diverged" and diverged["steps"] % 8 != 0  # cut inside its epoch


def test_can_ensemble_refuses_with_a_reason(tmp_path):
    ok, reason = can_ensemble(members(3))
    assert ok and reason == ""
    for model in BN_MODELS.values():  # BatchNorm stand-ins and every stop rule batch now
        ok, reason = can_ensemble(members(3, **model, stop={"steady_state": {"window": 3}, "escape": {"factor": 2}}))
        assert ok, reason
    cases = [
        ([base(), base(model="cnn_digits", model_args={})], "model"),
        ([base(), base(optimizer={"delay": 2})], "delay"),
        ([base(model="vgg11", model_args={})], "paper-scale"),
        ([base(optimizer={"delay": 1, "variant": "momentum", "momentum": 0.5}),
          base(optimizer={"delay": 1, "variant": "momentum", "momentum": 0.5, "velocity": "step"})], "velocity"),
        ([base(optimizer={"delay": {"kind": "probs", "probs": [0.5, 0.5]}}),
          base(optimizer={"delay": {"kind": "probs", "probs": [0.25, 0.75]}})], "delay"),
        ([base(dataset="mnist", dataset_args={}, augment=True)], "augment"),
        ([base(), base(batch_size=64)], "batch_size"),
        ([base(perturb=0.1)], "perturb"),
    ]
    for specs, word in cases:
        ok, reason = can_ensemble(specs)
        assert not ok and word in reason, (word, reason)
        with pytest.raises(UserError, match="run_training"):
            run_ensemble(specs, [str(tmp_path / f"x{i}") for i in range(len(specs))])


def test_run_folders_are_single_run_folders(tmp_path):
    specs = members(3, epochs=2)
    outs = [str(tmp_path / f"e{i}") for i in range(len(specs))]
    run_ensemble(specs, outs)
    for i, out in enumerate(outs):
        assert sorted(n for n in os.listdir(out) if not n.startswith(".")) == ["final.pt", "metrics.csv", "run.json", "summary.json"]
        rows = read_metrics(os.path.join(out, "metrics.csv"))
        assert [r["epoch"] for r in rows] == [0, 2]
        ckpt = load_checkpoint(os.path.join(out, "final.pt"))
        assert ckpt["epoch"] == 2 and ckpt["step"] == 16 and ckpt["metrics"] == ckpt["loop"]["rows"]
        model, spec = model_from_checkpoint(os.path.join(out, "final.pt"))
        assert spec["seed"] == specs[i]["seed"]
        assert json.load(open(os.path.join(out, "run.json")))["ensemble"] == {"members": 4, "index": i}
    # a second call finds the finished runs and returns the same summaries
    again = run_ensemble(specs, outs)
    assert [s["final"]["train_loss"] for s in again] == [
        json.load(open(os.path.join(o, "summary.json")))["final"]["train_loss"] for o in outs]


def test_member_checkpoint_resumes_as_a_single_run(tmp_path):
    """A member's checkpoint.pt has the single run's format: run_training can resume it."""
    spec = base(epochs=6, checkpoint_every=2, optimizer={"delay": 3, "variant": "shifted", "momentum": 0.5})
    out = str(tmp_path / "m")
    run_ensemble([dict(spec, epochs=4)], [out], final_in_flight=True)  # 4 epochs, then pretend it was interrupted
    ckpt = load_checkpoint(os.path.join(out, "final.pt"))
    ckpt["spec"] = dict(ckpt["spec"], epochs=6)
    ckpt["loop"]["status"] = None
    torch.save(ckpt, os.path.join(out, "checkpoint.pt"))
    os.remove(os.path.join(out, "final.pt"))
    run_training(ckpt["spec"], out)
    run_training(spec, str(tmp_path / "whole"))
    compare(out, str(tmp_path / "whole"), 1e-10)


def test_a_finished_members_final_pt_without_in_flight_buffers_reloads_exactly(tmp_path):
    """final.pt keeps no in-flight buffers (asgd.without_in_flight); an ensemble that finds it (its
    kept copy gone) writes the same summary and final.pt again, as the single run does."""
    import shutil

    specs = random_members(4)[:2]
    outs = [str(tmp_path / f"m{i}") for i in range(2)]
    first = run_ensemble(specs, outs)
    before = [load_checkpoint(os.path.join(o, "final.pt")) for o in outs]
    assert all(not has_in_flight(c["optimizer"]) for c in before)
    for o in outs:
        shutil.rmtree(os.path.join(o, ".finished"))
    again = run_ensemble(specs, outs)
    strip = lambda d: {k: v for k, v in d.items() if k != "seconds"}  # noqa: E731
    assert [strip(s) for s in again] == [strip(s) for s in first]
    for o, b in zip(outs, before):
        a = load_checkpoint(os.path.join(o, "final.pt"))
        assert same_schedule_state(a["optimizer"], b["optimizer"])
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])


def test_sigkill_and_resume_matches_an_uninterrupted_ensemble(tmp_path):
    specs = members(3, epochs=120, checkpoint_every=3, eval_every=10)
    spec_file = tmp_path / "specs.json"
    spec_file.write_text(json.dumps(specs))
    killed = [str(tmp_path / f"k{i}") for i in range(len(specs))]
    cmd = [sys.executable, "-m", "delay_stability.ensemble", str(spec_file), *killed]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(killed[-1], "checkpoint.pt")):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.005)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    for out in killed:
        assert not os.path.exists(os.path.join(out, "final.pt"))
        for name in ("metrics.csv", "run.json"):
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    whole = [str(tmp_path / f"w{i}") for i in range(len(specs))]
    run_ensemble(specs, whole)
    for k, w in zip(killed, whole):
        strip = lambda rows: [{c: v for c, v in r.items() if c != "seconds"} for r in rows]  # noqa: E731
        assert strip(read_metrics(os.path.join(k, "metrics.csv"))) == strip(read_metrics(os.path.join(w, "metrics.csv")))
        a, b = load_checkpoint(os.path.join(k, "final.pt")), load_checkpoint(os.path.join(w, "final.pt"))
        for name in a["model"]:
            assert torch.equal(a["model"][name], b["model"][name]), name
        assert same_schedule_state(a["optimizer"], b["optimizer"])
        resumed = json.load(open(os.path.join(k, "run.json")))["resumed"]
        assert len(resumed) == 1 and resumed[0]["epoch"] >= 3


def random_members(workers, **overrides):
    """Four members with M random workers (geometric staleness), negative momentum among them."""
    b = base(**overrides)
    o = {"schedule": "random", "workers": workers}
    return [
        dict(b, lr=0.05, seed=1, optimizer=dict(o)),
        dict(b, lr=0.1, seed=2, optimizer=dict(o, variant="momentum", momentum=-0.45)),
        dict(b, lr=0.2, seed=3, optimizer=dict(o, variant="shifted", momentum=0.5, weight_decay=1e-3)),
        dict(b, lr=0.03, seed=4, optimizer=dict(o, variant="momentum", momentum=0.9)),
    ]


@pytest.mark.parametrize("batch_size", [32, 0], ids=["minibatch", "fullbatch"])
def test_random_worker_members_equal_their_single_runs(tmp_path, batch_size):
    """Each member draws its landing worker from random.Random(seed) as its DelayedSGD does."""
    outs, _ = check_against_single(tmp_path, random_members(4, batch_size=batch_size), 1e-10)
    for i in range(4):
        mine, single = (load_checkpoint(os.path.join(d, "final.pt"))["optimizer"]["delayed"]
                        for d in (outs[i], str(tmp_path / f"s{i}")))
        assert mine["hist"] == single["hist"] and mine["stamps"] == single["stamps"] and mine["rng"] == single["rng"]
    if batch_size:
        assert len(mine["hist"]) > 4  # staleness beyond M - 1 occurs: not round robin


def test_random_worker_checkpoint_resumes_as_a_single_run(tmp_path):
    spec = random_members(3, epochs=6, checkpoint_every=2)[2]
    out = str(tmp_path / "m")
    run_ensemble([dict(spec, epochs=4)], [out], final_in_flight=True)
    ckpt = load_checkpoint(os.path.join(out, "final.pt"))
    ckpt["spec"] = dict(ckpt["spec"], epochs=6)
    ckpt["loop"]["status"] = None
    torch.save(ckpt, os.path.join(out, "checkpoint.pt"))
    os.remove(os.path.join(out, "final.pt"))
    run_training(ckpt["spec"], out)
    run_training(spec, str(tmp_path / "whole"))
    compare(out, str(tmp_path / "whole"), 1e-10)


def test_settle_stops_a_member_as_its_single_run(tmp_path):
    """The settle rule (train loss below a level for `window` epochs) is batched: the member that
    reaches the level leaves at the same epoch as its single run, the others go on."""
    specs = random_members(2, epochs=10, eval_every=3, stop={"settle": {"below": 1.2, "window": 1}})
    specs[0] = dict(specs[0], lr=0.3)
    outs, _ = check_against_single(tmp_path, specs, 1e-10)
    statuses = [json.load(open(os.path.join(o, "summary.json")))["status"] for o in outs]
    assert "settled" in statuses and statuses != ["settled"] * 4


# ---------------------------------------------------------------- BatchNorm stand-ins, every option

BN_MODELS = {
    "cnn_digits_bn": dict(model="cnn_digits", model_args={"batchnorm": True, "channels": [4, 8], "hidden": 16}),
    "resnet_digits": dict(model="resnet_digits", model_args={"width": 4}),
}
STEP_LR = {"kind": "step", "milestones": [2], "gamma": 0.5, "warmup_epochs": 1}


def every_option(tau, **overrides):
    """Four members covering each variant, dampening on and off, weight decay and an LR schedule."""
    b = base(**{"epochs": 3, **overrides})
    return [
        dict(b, lr=0.05, seed=1, optimizer={"delay": tau, "weight_decay": 1e-2}, lr_schedule=STEP_LR),
        dict(b, lr=0.1, seed=2, optimizer={"delay": tau, "variant": "momentum", "momentum": 0.9, "dampening": False}),
        dict(b, lr=0.2, seed=3, optimizer={"delay": tau, "variant": "shifted", "momentum": 0.5, "weight_decay": 1e-3},
             lr_schedule=STEP_LR),
        dict(b, lr=0.03, seed=4, optimizer={"delay": tau, "variant": "momentum", "momentum": -0.3, "weight_decay": 5e-3}),
    ]


@pytest.mark.parametrize("batch_size", [32, 0], ids=["minibatch", "fullbatch"])
@pytest.mark.parametrize("model", list(BN_MODELS))
def test_batchnorm_members_equal_their_single_runs(tmp_path, model, batch_size):
    """Per-member BatchNorm: batch statistics in training (and for L0), running statistics of each
    member's own in evaluation; weights, running statistics and every metric as the single runs."""
    outs, _ = check_against_single(tmp_path, every_option(2, batch_size=batch_size, **BN_MODELS[model]), 1e-12)
    for i, out in enumerate(outs):
        state = load_checkpoint(os.path.join(out, "final.pt"))["model"]
        means = [k for k in state if k.endswith("running_mean")]
        assert means and all(state[k].abs().sum() > 0 for k in means)  # the running statistics moved
        assert int(state[means[0].replace("running_mean", "num_batches_tracked")]) == json.load(
            open(os.path.join(out, "summary.json")))["steps"]


def test_batchnorm_random_workers_equal_their_single_runs(tmp_path):
    check_against_single(tmp_path, random_members(3, epochs=3, **BN_MODELS["resnet_digits"]), 1e-12)


def test_batchnorm_float32_within_1e_6(tmp_path):
    """float32 over 16 steps (the batched kernels sum in another order; the gap grows with the steps:
    ~1.3e-6 after 24)."""
    check_against_single(tmp_path, every_option(2, dtype="float32", epochs=2, **BN_MODELS["cnn_digits_bn"]), 1e-6)


def test_a_diverging_batchnorm_member_leaves_the_batch(tmp_path):
    specs = every_option(1, epochs=6, **BN_MODELS["resnet_digits"])
    specs[2] = dict(specs[2], lr=200.0)
    outs = [str(tmp_path / f"e{i}") for i in range(len(specs))]
    run_ensemble(specs, outs)
    for i, spec in enumerate(specs):
        run_training(spec, str(tmp_path / f"s{i}"))
        # the diverging member's loss reaches ~1e12: rounding differences grow with it
        compare(outs[i], str(tmp_path / f"s{i}"), 1e-6 if i == 2 else 1e-12)
    statuses = [json.load(open(os.path.join(o, "summary.json")))["status"] for o in outs]
    assert statuses[2] == "diverged" and statuses.count("completed") == 3


def test_steady_state_and_escape_stop_members_as_their_single_runs(tmp_path):
    """Every stop rule of train.check_stop batches: a steady state (with and without the gradient
    norm), an escape that stops, a divergence; each member stops at its single run's epoch."""
    specs = members(2, epochs=12, eval_every=5)
    specs[0] = dict(specs[0], stop={"steady_state": {"window": 3, "rel_tol": 0.2}})
    specs[1] = dict(specs[1], stop={"steady_state": {"window": 2, "rel_tol": 0.5, "grad_norm_tol": 10.0}})
    specs[2] = dict(specs[2], lr=3.0, stop={"escape": {"factor": 1.0, "delta": 0.0}, "divergence": {"loss_factor": 1e300}})
    outs, _ = check_against_single(tmp_path, specs, 1e-10)
    summaries = [json.load(open(os.path.join(o, "summary.json"))) for o in outs]
    assert [s["status"] for s in summaries] == ["steady", "steady", "escaped", "completed"]
    assert summaries[2]["escaped"] and summaries[2]["epochs_to_escape"] == summaries[2]["epochs_run"]
    for s, o in zip(summaries[:2], outs[:2]):
        single = json.load(open(os.path.join(str(tmp_path / f"s{outs.index(o)}"), "summary.json")))
        assert s["steady_state_epoch"] == single["steady_state_epoch"] < 12


KILL_WHILE_WRITING = r"""
import os, signal, sys, json
import delay_stability.ensemble as ens
real, calls, kill_at = ens.save_checkpoint, [0], int(sys.argv[2])
def save(path, payload):
    calls[0] += 1
    if calls[0] == kill_at:  # killed while writing this member's checkpoint: a partial temporary file
        with open(os.path.join(os.path.dirname(path), ".tmp-partial"), "wb") as f:
            f.write(b"half a checkpoint")
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, payload)
ens.save_checkpoint = save
ens.run_ensemble(json.load(open(sys.argv[1])), sys.argv[3:])
"""


def test_sigkill_while_member_checkpoints_are_written(tmp_path):
    """Killed between (and inside) the members' checkpoint writes, members resume at different
    epochs (two at epoch 4, two at epoch 2) and end bit for bit as an uninterrupted ensemble."""
    specs = every_option(2, epochs=6, checkpoint_every=2, **BN_MODELS["resnet_digits"])
    spec_file = tmp_path / "specs.json"
    spec_file.write_text(json.dumps(specs))
    killed = [str(tmp_path / f"k{i}") for i in range(len(specs))]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-c", KILL_WHILE_WRITING, str(spec_file), "7", *killed]  # 4 saves at epoch 2, 2 at epoch 4
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    epochs = [load_checkpoint(os.path.join(k, "checkpoint.pt"))["epoch"] for k in killed]
    assert epochs == [4, 4, 2, 2]
    assert os.path.exists(os.path.join(killed[2], ".tmp-partial"))
    done = subprocess.run([sys.executable, "-m", "delay_stability.ensemble", str(spec_file), *killed],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    whole = [str(tmp_path / f"w{i}") for i in range(len(specs))]
    run_ensemble(specs, whole)
    strip = lambda rows: [{c: v for c, v in r.items() if c != "seconds"} for r in rows]  # noqa: E731
    for k, w, epoch in zip(killed, whole, epochs):
        assert not os.path.exists(os.path.join(k, ".tmp-partial"))
        assert strip(read_metrics(os.path.join(k, "metrics.csv"))) == strip(read_metrics(os.path.join(w, "metrics.csv")))
        a, b = load_checkpoint(os.path.join(k, "final.pt")), load_checkpoint(os.path.join(w, "final.pt"))
        for name in b["model"]:
            assert torch.equal(a["model"][name], b["model"][name]), name
        assert same_schedule_state(a["optimizer"], b["optimizer"])
        assert [r["epoch"] for r in json.load(open(os.path.join(k, "run.json")))["resumed"]] == [epoch]


def test_the_vmap_kernel_agrees_with_the_single_runs_too(tmp_path):
    """torch.func's kernel (the fallback for layers with no stacked form) on a BatchNorm ResNet."""
    specs = every_option(2, **BN_MODELS["resnet_digits"])
    outs = [str(tmp_path / f"e{i}") for i in range(len(specs))]
    run_ensemble(specs, outs, kernel="vmap")
    for i, spec in enumerate(specs):
        run_training(spec, str(tmp_path / f"s{i}"))
        compare(outs[i], str(tmp_path / f"s{i}"), 1e-12)
    with pytest.raises(UserError, match="kernel"):
        run_ensemble(specs, outs, kernel="fast")


def test_the_quick_figures_batch_their_seeds():
    """Figures 11, 5 (A-SGD arms) and 9 (constant and Gaussian workers, weight decay on the weights,
    warm-up) and Table 1's CNN at the quick scale: their runs of one delay and batch size train as one
    ensemble."""
    import yaml

    from delay_stability.experiments import imagenet as im
    from delay_stability.experiments import spikes as sp
    from delay_stability.experiments import table1 as t1
    from delay_stability.spec import can_ensemble as decide
    from delay_stability.spec import ensemble_groups

    config = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "config.yaml")))["quick"]
    fig11 = [r.spec for r in sp.runs(config["spikes"], config["spikes"]["train"])]
    assert len(fig11) >= 3 and decide(fig11) == (True, "")
    block = config["imagenet"]
    groups = {}
    for name, run in im.runs(block, "fig5", block["train"]):
        spec = run.spec
        groups.setdefault((json.dumps(spec["optimizer"].get("delay")), spec["batch_size"]), []).append(spec)
    asgd = max(groups.values(), key=len)
    assert len(asgd) >= 3 and decide(asgd) == (True, "")
    fig9 = [run.spec for _, run in im.runs(block, "fig9", block["train"])]
    workers = [s for s in fig9 if s["optimizer"].get("schedule") == "gaussian"]
    assert len(workers) >= 3 and decide(workers) == (True, "")
    assert all(s["optimizer"]["weight_decay_on"] == "weights" for s in workers)
    assert sorted(i for g in ensemble_groups(fig9) for i in g) == list(range(len(fig9)))  # no run alone
    cnn = next(n for n in config["table1"]["networks"] if n["train"]["model"] == "cnn_digits")
    scan = [dict(cnn["train"], lr=lr, seed=s) for lr in config["table1"]["sb_lrs"] for s in config["table1"]["seeds"]]
    assert len(scan) >= t1.MIN_ENSEMBLE and t1.can_batch(scan)


def test_convolutional_members_train_in_batches_of_at_most_max_conv_members(tmp_path, monkeypatch):
    import delay_stability.ensemble as ens

    monkeypatch.setattr(ens, "MAX_CONV_MEMBERS", 3)
    seen = []
    real = ens._train_group
    monkeypatch.setattr(ens, "_train_group", lambda fam, ms, *a: (seen.append(len(ms)), real(fam, ms, *a)))
    check_against_single(tmp_path, every_option(2, batch_size=0, **BN_MODELS["cnn_digits_bn"]), 1e-12)
    assert seen == [3, 1]


# ---------------------------------------------------------------- the quick figures' options: decay on the
# weights only, Gaussian / compute-time / replayed workers, torch's velocity start, warm-up from a start

WARMUP_FROM = {"kind": "step", "milestones": [2], "gamma": 0.5, "warmup_epochs": 1, "warmup_start": 0.25}


def worker_members(schedule, workers=3, **overrides):
    """Four members of one worker schedule: weight decay on the conv/linear weights only (and on all,
    and none), plain, server and shifted momentum, torch's first step u = G, and a warm-up from 1/4."""
    b = base(**{"epochs": 3, **overrides})
    o = {"schedule": schedule, "workers": workers}
    return [
        dict(b, lr=0.05, seed=1, optimizer=dict(o, weight_decay=1e-2, weight_decay_on="weights"), lr_schedule=WARMUP_FROM),
        dict(b, lr=0.1, seed=2, optimizer=dict(o, variant="momentum", momentum=0.9, velocity_start="gradient",
                                               weight_decay=5e-3, weight_decay_on="weights", dampening=False)),
        dict(b, lr=0.2, seed=3, optimizer=dict(o, variant="shifted", momentum=0.5, weight_decay=1e-3,
                                               weight_decay_on="weights", velocity_start="gradient"),
             lr_schedule=WARMUP_FROM),
        dict(b, lr=0.03, seed=4, optimizer=dict(o, variant="shifted", momentum=-0.3, weight_decay=5e-3)),
    ]


def same_schedule_state(a, b) -> bool:
    """Two finished runs' final.pt optimizer states (without their in-flight buffers) agree."""
    assert not has_in_flight(a) and not has_in_flight(b)
    return a["delayed"] == b["delayed"] and a["param_groups"] == b["param_groups"]


def same_optimizer_state(ens_dir, single_dir):
    """The member's final DelayedSGD state is its single run's: groups, in-flight gradients and
    velocities in the group-by-group layout, staleness counts, stamps, RNG, velocity flags."""
    mine, single = (load_checkpoint(os.path.join(d, "final.pt"))["optimizer"] for d in (ens_dir, single_dir))
    strip = lambda groups: [{k: v for k, v in g.items() if k != "lr"} for g in groups]  # noqa: E731
    assert strip(mine["param_groups"]) == strip(single["param_groups"])
    a, b = mine["delayed"], single["delayed"]
    for key in ("schedule", "stamps", "free", "rng", "hist", "last_staleness", "fresh", "velocity_start",
                "spread", "compute_time", "landing_order", "schedule_state", "t"):
        assert a[key] == b[key], key
    for key in ("grads", "velocity"):
        if b[key] is not None:
            assert float((a[key] - b[key]).norm()) <= 1e-10 * float(b[key].norm()), key
    return mine


@pytest.mark.parametrize("model", list(BN_MODELS))
def test_gaussian_workers_with_decay_on_weights_equal_their_single_runs(tmp_path, model):
    """The quick figures' recipe on a BatchNorm stand-in: weight_decay_on weights (two parameter
    groups, biases and BatchNorm unscaled), the authors' Gaussian workers, shifted momentum with
    velocity_start gradient and a warm-up from warmup_start: every member as its single run."""
    specs = worker_members("gaussian", **BN_MODELS[model])
    specs[3]["optimizer"]["spread"] = 3.0  # a wide spread: staleness beyond M - 1 within 24 steps
    outs, _ = check_against_single(tmp_path, specs, 1e-12)
    for i, out in enumerate(outs):
        state = same_optimizer_state(out, str(tmp_path / f"s{i}"))
        assert len(state["param_groups"]) == (2 if i < 3 else 1)
        assert state["param_groups"][-1]["weight_decay"] == (0.0 if i < 3 else 5e-3)
    assert len(state["delayed"]["hist"]) > 3  # staleness beyond M - 1 occurs: not round robin


def test_decay_on_weights_decays_only_the_weights(tmp_path):
    """Brute force, one full-batch step at tau = 0: a Linear weight moves by -eta (g + wd w_0), a
    bias by -eta g alone (weight_decay_on weights), while weight_decay_on all decays both."""
    from delay_stability.models import build_model
    from delay_stability.spec import validate_spec
    from delay_stability.train import training_setup

    spec = base(epochs=1, batch_size=0, optimizer={"delay": 0, "weight_decay": 0.5, "weight_decay_on": "weights"})
    alike = dict(spec, optimizer={"delay": 0, "weight_decay": 0.5})
    outs = [str(tmp_path / "weights"), str(tmp_path / "all")]
    run_ensemble([spec, alike], outs, final_in_flight=True)  # final.pt with the starting weights
    data = training_setup(validate_spec(spec)).data
    model = build_model(spec["model"], **spec["model_args"]).to(torch.float64)
    ckpt = load_checkpoint(os.path.join(outs[0], "final.pt"))
    with torch.no_grad():
        for p, p0 in zip(model.parameters(), ckpt["init_params"]):
            p.copy_(p0)
    loss = torch.nn.functional.cross_entropy(model(data.train_x), data.train_y)
    grads = dict(zip([n for n, _ in model.named_parameters()], torch.autograd.grad(loss, list(model.parameters()))))
    for out, on_bias in zip(outs, (0.0, 0.5)):
        final = load_checkpoint(os.path.join(out, "final.pt"))["model"]
        for (name, p0) in model.named_parameters():
            decay = 0.5 if name.endswith("weight") else on_bias
            expected = p0.detach() - 0.05 * (grads[name] + decay * p0.detach())
            assert torch.allclose(final[name], expected, rtol=0, atol=1e-12), (out, name)


def test_compute_time_and_replayed_workers_equal_their_single_runs(tmp_path):
    """Compute-time workers (each member's finish times from its own random.Random(seed)) and a
    replayed landing order batch too, draw for draw."""
    check = worker_members("compute_time", workers=4, batch_size=64)
    for spec in check:
        spec["optimizer"]["compute_time"] = {"law": "normal", "mean": 1.0, "std": 0.5}
    check_against_single(tmp_path / "ct", check, 1e-10)
    log = tmp_path / "staleness.csv"
    log.write_text("worker\n" + "\n".join(str(w) for w in [7, 3, 3, 5, 7, 3, 5, 5, 7]) + "\n")
    replay = worker_members("replay", workers=3, batch_size=64)
    for spec in replay:
        spec["optimizer"]["landing_log"] = str(log)
    outs, _ = check_against_single(tmp_path / "rp", replay, 1e-10)
    for i, out in enumerate(outs):
        same_optimizer_state(out, str(tmp_path / "rp" / f"s{i}"))


def test_gaussian_member_checkpoint_resumes_as_a_single_run(tmp_path):
    """A Gaussian-worker member's checkpoint (two parameter groups, torch's velocity flags) is the
    single run's: run_training resumes it and ends as the uninterrupted run."""
    spec = worker_members("gaussian", epochs=6, checkpoint_every=2)[2]
    out = str(tmp_path / "m")
    run_ensemble([dict(spec, epochs=4)], [out], final_in_flight=True)
    ckpt = load_checkpoint(os.path.join(out, "final.pt"))
    ckpt["spec"] = dict(ckpt["spec"], epochs=6)
    ckpt["loop"]["status"] = None
    torch.save(ckpt, os.path.join(out, "checkpoint.pt"))
    os.remove(os.path.join(out, "final.pt"))
    run_training(ckpt["spec"], out, final_in_flight=True)
    run_training(spec, str(tmp_path / "whole"), final_in_flight=True)
    compare(out, str(tmp_path / "whole"), 1e-10)
    same_optimizer_state(out, str(tmp_path / "whole"))
    # and the other way: the ensemble resumes a single run's checkpoint (its buffers group by group)
    back = str(tmp_path / "back")
    run_training(dict(spec, epochs=4), back, final_in_flight=True)
    ckpt = load_checkpoint(os.path.join(back, "final.pt"))
    assert len(ckpt["optimizer"]["param_groups"]) == 2
    ckpt["spec"] = dict(ckpt["spec"], epochs=6)
    ckpt["loop"]["status"] = None
    torch.save(ckpt, os.path.join(back, "checkpoint.pt"))
    os.remove(os.path.join(back, "final.pt"))
    run_ensemble([spec], [back], final_in_flight=True)
    compare(back, str(tmp_path / "whole"), 1e-10)
    same_optimizer_state(back, str(tmp_path / "whole"))


def test_iid_ring_members_equal_their_single_runs(tmp_path):
    """The i.i.d. delays of eq. 18 (a ring of the last K+1 gradients, tau_t drawn each step; with
    shifted momentum v_{t+1} takes over v_{t-tau}): each member draws its delays as its DelayedSGD."""
    delay = {"kind": "probs", "probs": [0.2, 0.3, 0.1, 0.4]}
    specs = worker_members("random", batch_size=64)
    for spec in specs:
        spec["optimizer"] = dict(spec["optimizer"], schedule="iid", delay=delay)
        del spec["optimizer"]["workers"]
    outs, _ = check_against_single(tmp_path, specs, 1e-10)
    for i, out in enumerate(outs):
        state = same_optimizer_state(out, str(tmp_path / f"s{i}"))
    assert state["delayed"]["probs"] == [0.2, 0.3, 0.1, 0.4] and len(state["delayed"]["hist"]) == 4


def test_the_refusals_that_remain():
    ok, reason = can_ensemble([base(optimizer={"delay": 1, "variant": "momentum", "momentum": 0.5}),
                               base(optimizer={"delay": 1, "variant": "momentum", "momentum": 0.5, "velocity": "step"})])
    assert not ok and "velocity" in reason
    ok, reason = can_ensemble(worker_members("gaussian")[:1] + worker_members("random")[1:2])
    assert not ok and "schedule" in reason
