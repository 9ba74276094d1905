"""The training engine: spec validation, exact agreement with a hand-written loop, stopping rules,
checkpoints, continuation, and resume after SIGKILL ending bit-for-bit as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from delay_stability.asgd import DelayedSGD
from delay_stability.data import load_dataset
from delay_stability.errors import UserError
from delay_stability.models import build_model
from delay_stability.spec import apply_overrides, read_spec, validate_spec
from delay_stability.train import (
    METRIC_COLUMNS,
    build_loss,
    load_checkpoint,
    lr_factor,
    model_from_checkpoint,
    read_metrics,
    run_training,
)



def quick_spec(**overrides):
    """Digits MLP, squared loss, float64, full batch: the stability pipeline's kind of run."""
    spec = dict(
        model="mlp", model_args={"hidden": [16], "activation": "tanh"}, dataset="digits",
        dataset_args={"train_size": 300}, loss="mse", dtype="float64", device="cpu", seed=3,
        threads=1, epochs=12, batch_size=0, lr=0.2, optimizer={"delay": 2}, eval_every=1,
    )
    spec.update(overrides)
    return spec


def rows_without_seconds(path):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_metrics(path)]


def final_weights(out_dir):
    return load_checkpoint(os.path.join(out_dir, "final.pt"))["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------ the spec


def test_validate_spec_fills_defaults():
    s = validate_spec({"model": "mlp", "epochs": 3, "lr": 1})
    assert s["lr"] == 1.0 and isinstance(s["lr"], float)
    assert s["optimizer"] == {
        "delay": 0, "workers": None, "schedule": "round_robin", "momentum": 0.0, "variant": "plain",
        "dampening": True, "weight_decay": 0.0, "weight_decay_on": "all", "velocity": "gradient",
        "velocity_start": "zero", "spread": None, "compute_time": None, "landing_log": None,
    }
    assert s["stop"] == {"steady_state": None, "divergence": {"loss_factor": 1e4}, "escape": None, "settle": None}
    assert s["dataset_args"] == {"train_size": 1297, "split_seed": 0}
    assert s["lr_schedule"] == {"kind": "constant", "warmup_epochs": 0, "warmup_start": 0.0}
    assert validate_spec(s) == s  # idempotent
    dist = validate_spec({"model": "mlp", "epochs": 1, "lr": 0.1, "optimizer": {"delay": {"kind": "probs", "probs": [0.5, 0.5]}}})
    assert dist["optimizer"]["schedule"] == "iid"  # the eq. 18 ring; "distribution" is its old name
    old = validate_spec({"model": "mlp", "epochs": 1, "lr": 0.1,
                         "optimizer": {"delay": {"kind": "probs", "probs": [0.5, 0.5]}, "schedule": "distribution"}})
    assert old["optimizer"]["schedule"] == "distribution"


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"optimizer": {"variant": "foo"}}, "spec key 'optimizer.variant': unknown value 'foo' (choose plain, momentum, shifted)"),
        ({"colour": "red"}, "spec key 'colour': unknown key"),
        ({"optimizer": {"delya": 3}}, "spec key 'optimizer.delya': unknown key"),
        ({"lr": 0}, "spec key 'lr': must be > 0"),
        ({"lr": "fast"}, "spec key 'lr': expected a finite number"),
        ({"epochs": 2.5}, "spec key 'epochs': expected an integer"),
        ({"model": "vgg12"}, "spec key 'model': unknown value 'vgg12'"),
        ({"model_args": {"depth": 3}}, "spec key 'model_args.depth'"),
        ({"dataset_args": {"train_size": 5000}}, "spec key 'dataset_args.train_size'"),
        ({"dataset_args": {"root": "x"}}, "spec key 'dataset_args.root'"),
        ({"loss": "hinge"}, "spec key 'loss': unknown value 'hinge'"),
        ({"optimizer": {"delay": -1}}, "spec key 'optimizer.delay': must be >= 0"),
        ({"optimizer": {"workers": 0, "schedule": "random"}}, "spec key 'optimizer.workers': must be >= 1"),
        ({"optimizer": {"momentum": 0.9}}, "spec key 'optimizer.variant'"),
        ({"optimizer": {"delay": 3, "schedule": "distribution"}}, "spec key 'optimizer.schedule'"),
        ({"optimizer": {"delay": 3, "schedule": "iid"}}, "spec key 'optimizer.schedule'"),
        ({"optimizer": {"workers": 4, "schedule": "random", "spread": 1.0}}, "spec key 'optimizer.spread'"),
        ({"optimizer": {"workers": 4, "schedule": "replay"}}, "spec key 'optimizer.landing_log'"),
        ({"optimizer": {"velocity": "eta"}}, "spec key 'optimizer.velocity'"),
        ({"optimizer": {"weight_decay_on": "bn"}}, "spec key 'optimizer.weight_decay_on'"),
        ({"lr_schedule": {"kind": "constant", "warmup_start": 2.0}}, "spec key 'lr_schedule.warmup_start'"),
        ({"optimizer": {"delay": {"kind": "poisson"}}}, "spec key 'optimizer.delay.kind'"),
        ({"optimizer": {"delay": {"kind": "probs", "probs": [0.2, 0.2]}}}, "spec key 'optimizer.delay.probs'"),
        ({"lr_schedule": {"kind": "step"}}, "spec key 'lr_schedule.milestones': required"),
        ({"lr_schedule": {"kind": "cosine"}}, "spec key 'lr_schedule.kind'"),
        ({"stop": {"escape": {"factor": 2, "patience": 3}}}, "spec key 'stop.escape.patience'"),
        ({"stop": {"steady_state": {"window": 0}}}, "spec key 'stop.steady_state.window'"),
        ({"augment": True}, "spec key 'augment'"),
        ({"device": "tpu"}, "spec key 'device'"),
    ],
)
def test_validate_spec_names_the_bad_key(patch, message):
    spec = dict(quick_spec(), **patch)
    with pytest.raises(UserError) as err:
        validate_spec(spec)
    assert message in str(err.value)


def test_required_keys():
    with pytest.raises(UserError, match="'model': required"):
        validate_spec({"epochs": 1, "lr": 0.1})
    with pytest.raises(UserError, match="'lr': required"):
        validate_spec({"model": "mlp", "epochs": 1})


def test_spec_files_and_overrides(tmp_path):
    (tmp_path / "a.yaml").write_text("model: mlp\nepochs: 3\nlr: 0.1\noptimizer: {delay: 2}\n")
    (tmp_path / "b.json").write_text(json.dumps({"model": "mlp", "epochs": 3, "lr": 0.1}))
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    assert read_spec(str(tmp_path / "a.yaml"))["optimizer"] == {"delay": 2}
    assert read_spec(str(tmp_path / "b.json"))["lr"] == 0.1
    with pytest.raises(UserError, match="bad.yaml"):
        read_spec(str(tmp_path / "bad.yaml"))
    with pytest.raises(UserError, match="no such file"):
        read_spec(str(tmp_path / "none.yaml"))
    spec = apply_overrides({"optimizer": {"delay": 2}}, ["optimizer.delay=8", "lr=0.05", "stop.escape.stop=false"])
    assert spec == {"optimizer": {"delay": 8}, "lr": 0.05, "stop": {"escape": {"stop": False}}}
    with pytest.raises(UserError, match="KEY=VALUE"):
        apply_overrides({}, ["lr"])


# ------------------------------------------------------------------ building blocks


def test_mse_loss_and_lr_schedule():
    out = torch.tensor([[0.5, 0.2, -0.1], [1.0, 0.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    expected = 0.5 * ((0.25 + 0.04 + 0.01) + (1.0 + 0.0 + 1.0)) / 2
    assert build_loss({"loss": "mse"})(out, y).item() == pytest.approx(expected, rel=1e-15)
    assert build_loss({"loss": "cross_entropy"})(out, y).item() == pytest.approx(
        -(torch.log_softmax(out, 1)[[0, 1], [0, 2]]).mean().item(), rel=1e-14
    )
    sched = {"kind": "step", "milestones": [3, 5], "gamma": 0.1, "warmup_epochs": 2}
    assert [lr_factor(sched, e, s, 4) for e, s in ((0, 0), (0, 3), (1, 7), (2, 8))] == [0.25 / 2, 0.5, 1.0, 1.0]
    assert lr_factor(sched, 3, 12, 4) == pytest.approx(0.1) and lr_factor(sched, 6, 24, 4) == pytest.approx(0.01)


def test_goyal_warmup_starts_at_the_unscaled_lr():
    """warmup_start = 1/k ramps linearly from eta/k to eta (Goyal et al.); 1 is no ramp at all."""
    sched = {"kind": "constant", "warmup_epochs": 2, "warmup_start": 0.25}
    assert [lr_factor(sched, 0, s, 5) for s in (0, 4, 9, 10)] == pytest.approx(
        [0.25 + 0.75 / 10, 0.25 + 0.75 * 5 / 10, 1.0, 1.0], rel=1e-15)
    flat = {"kind": "constant", "warmup_epochs": 2, "warmup_start": 1.0}
    assert {lr_factor(flat, 0, s, 5) for s in range(12)} == {1.0}


def test_weight_decay_on_weights_spares_biases_and_batchnorm():
    from delay_stability.train import build_optimizer

    spec = validate_spec({"model": "cnn_digits", "model_args": {"batchnorm": True}, "epochs": 1, "lr": 0.1,
                          "optimizer": {"weight_decay": 0.01, "weight_decay_on": "weights"}})
    model = build_model(spec["model"], **spec["model_args"])
    opt = build_optimizer(spec, model)
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    assert {id(p) for p in opt.param_groups[0]["params"]} == decayed
    assert all(id(p) not in decayed for p in opt.param_groups[1]["params"])
    assert len(opt.param_groups[1]["params"]) > 0
    plain = build_optimizer(validate_spec(dict(spec, optimizer=dict(spec["optimizer"], weight_decay_on="all"))), model)
    assert len(plain.param_groups) == 1


# ------------------------------------------------------------------ the engine against a hand-written loop


@pytest.mark.parametrize("variant", ["plain", "shifted"])
def test_full_batch_run_equals_a_plain_loop(tmp_path, variant):
    """Same weights bit for bit, and train_loss of epoch k = the loss at the weights of step k-1."""
    opt_spec = {"delay": 3, "variant": variant, "momentum": 0.0 if variant == "plain" else 0.5}
    spec = quick_spec(optimizer=opt_spec)
    summary = run_training(spec, str(tmp_path))

    data = load_dataset(spec)
    torch.manual_seed(spec["seed"])
    model = build_model("mlp", hidden=[16], activation="tanh").double()
    w0 = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    opt = DelayedSGD(model.parameters(), lr=spec["lr"], **opt_spec)
    loss_fn = build_loss(spec)
    losses = []
    for _ in range(spec["epochs"]):
        loss = loss_fn(model(data.train_x), data.train_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert_same_weights(final_weights(str(tmp_path)), model.state_dict())

    rows = read_metrics(str(tmp_path / "metrics.csv"))
    assert list(rows[0]) == list(METRIC_COLUMNS)
    assert [r["epoch"] for r in rows] == list(range(13)) and [r["step"] for r in rows] == list(range(13))
    assert [r["train_loss"] for r in rows[1:]] == losses
    assert rows[0]["train_loss"] == losses[0] == summary["initial_train_loss"]
    w = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert rows[-1]["weight_norm"] == pytest.approx(w.norm().item(), rel=1e-12)
    assert rows[-1]["dist_from_init"] == pytest.approx((w - w0).norm().item(), rel=1e-12)
    with torch.no_grad():
        model.eval()
        out = model(data.val_x)
        assert rows[-1]["val_loss"] == pytest.approx(loss_fn(out, data.val_y).item(), rel=1e-12)
        assert rows[-1]["val_error"] == (out.argmax(1) != data.val_y).double().mean().item()
    assert rows[0]["mean_staleness"] is None
    assert [r["mean_staleness"] for r in rows[1:5]] == [0, 1, 2, 3] and rows[-1]["mean_staleness"] == 3
    assert summary["status"] == "completed" and summary["epochs_run"] == 12 and summary["steps"] == 12
    assert set(os.listdir(tmp_path)) == {"final.pt", "metrics.csv", "summary.json", "run.json", ".finished"}
    kept = tmp_path / ".finished" / os.listdir(tmp_path / ".finished")[0]
    assert sorted(os.listdir(kept)) == ["MANIFEST", "final.pt", "metrics.csv", "run.json", "summary.json"]
    # a verified copy, not a hard link: damage in place cannot reach it
    assert (kept / "final.pt").stat().st_ino != (tmp_path / "final.pt").stat().st_ino
    assert (kept / "final.pt").read_bytes() == (tmp_path / "final.pt").read_bytes()
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["spec"] == validate_spec(spec) and run["seed"] == 3 and run["device"] == "cpu"
    assert {"package_version", "torch_version", "hostname", "start_time", "end_time"} <= set(run)


def test_same_seed_same_run_and_callbacks(tmp_path):
    events = []
    spec = quick_spec(batch_size=64, epochs=3, optimizer={"workers": 3, "schedule": "random"}, eval_every=2)
    run_training(spec, str(tmp_path / "a"), callbacks=[lambda e, s: events.append((e, s.step, s.epoch))])
    run_training(spec, str(tmp_path / "b"))
    assert rows_without_seconds(tmp_path / "a" / "metrics.csv") == rows_without_seconds(tmp_path / "b" / "metrics.csv")
    assert [r["epoch"] for r in read_metrics(tmp_path / "a" / "metrics.csv")] == [0, 2, 3]
    assert_same_weights(final_weights(str(tmp_path / "a")), final_weights(str(tmp_path / "b")))
    kinds = [e for e, _, _ in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert kinds.count("step") == 3 * 5 and kinds.count("epoch") == 3  # 300 samples / 64 = 5 batches
    assert [s for e, s, _ in events if e == "step"] == list(range(1, 16))


def test_final_pt_keeps_no_in_flight_buffers_and_reloads_exactly(tmp_path):
    """final.pt leaves out the tau + 1 in-flight gradients, the velocity (asgd.without_in_flight) and
    the starting weights: its optimizer part holds no P-sized tensor, and the run reloaded from it (its kept copy gone)
    writes the same summary, staleness counts included; a DelayedSGD loaded from it refuses to
    step. ``final_in_flight=True`` keeps them, equal to those of a run that goes on."""
    spec = quick_spec(batch_size=64, epochs=3, optimizer={"workers": 5, "schedule": "random",
                                                          "variant": "momentum", "momentum": 0.5})
    out = tmp_path / "a"
    first = run_training(spec, str(out))
    ckpt = load_checkpoint(str(out / "final.pt"))
    delayed = ckpt["optimizer"]["delayed"]
    assert delayed["grads"] is None and delayed["velocity"] is None and delayed["in_flight"] == "dropped"
    assert sum(delayed["hist"]) == 15 and len(delayed["hist"]) > 5  # 3 epochs x 5 batches, staleness >= M
    full = tmp_path / "b"
    run_training(spec, str(full), final_in_flight=True)
    kept = load_checkpoint(str(full / "final.pt"))["optimizer"]["delayed"]
    n = sum(p.numel() for p in build_model("mlp", hidden=[16], activation="tanh").parameters())
    assert tuple(kept["grads"].shape) == (5, n) and tuple(kept["velocity"].shape) == (1, n)
    assert {k: v for k, v in kept.items() if k not in ("grads", "velocity")} == \
        {k: v for k, v in delayed.items() if k not in ("grads", "velocity", "in_flight")}
    assert ckpt["init_params"] is None and len(load_checkpoint(str(full / "final.pt"))["init_params"]) == 2 * 2
    assert (full / "final.pt").stat().st_size - (out / "final.pt").stat().st_size >= 7 * n * 8

    import shutil
    shutil.rmtree(out / ".finished")  # reloaded from final.pt itself, not restored from the kept copy
    again = run_training(spec, str(out))
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in first.items() if k != "seconds"}

    model = build_model("mlp", hidden=[16], activation="tanh").double()
    model.load_state_dict(ckpt["model"])
    from delay_stability.train import build_optimizer
    opt = build_optimizer(validate_spec(spec), model)
    opt.load_state_dict(ckpt["optimizer"])
    assert opt.staleness_histogram().tolist() == delayed["hist"] and opt.steps == 15
    with pytest.raises(RuntimeError, match="checkpoint.pt"):
        opt.step()


# ------------------------------------------------------------------ stopping rules


def test_divergence_ends_cleanly(tmp_path):
    summary = run_training(quick_spec(lr=50.0, epochs=200, optimizer={"delay": 4}), str(tmp_path))
    assert summary["status"] == "diverged" and summary["diverged"] is True
    e = summary["diverged_epoch"]
    assert 1 <= e < 200 and summary["epochs_run"] == e
    rows = read_metrics(tmp_path / "metrics.csv")
    last = rows[-1]
    assert last["epoch"] == e
    assert not np.isfinite(last["train_loss"]) or last["train_loss"] > 1e4 * summary["initial_train_loss"]
    assert all(np.isfinite(r["train_loss"]) and r["train_loss"] <= 1e4 * summary["initial_train_loss"] for r in rows[:-1])
    json.loads((tmp_path / "summary.json").read_text())  # strict JSON (no NaN)


def test_steady_state_stops_at_the_first_flat_window(tmp_path):
    stop = {"steady_state": {"window": 5, "rel_tol": 1e-2}}
    summary = run_training(quick_spec(lr=0.1, epochs=400, optimizer={"delay": 0}, stop=stop), str(tmp_path))
    assert summary["status"] == "steady"
    e = summary["steady_state_epoch"]
    losses = [r["train_loss"] for r in read_metrics(tmp_path / "metrics.csv")][1:]
    assert len(losses) == e

    def flat(k):  # the window ending at epoch k
        w = losses[k - 5 : k]
        return max(w) - min(w) <= 1e-2 * abs(sum(w) / 5)

    assert flat(e) and not any(flat(k) for k in range(5, e))


def test_continuation_escape_and_perturbation(tmp_path):
    base = tmp_path / "base"
    run_training(quick_spec(lr=0.1, epochs=30, optimizer={"delay": 0}), str(base))
    start = str(base / "final.pt")
    escape = {"factor": 1.5, "delta": 0.0, "stop": True}

    stay = run_training(quick_spec(lr=0.05, epochs=20, init_checkpoint=start, stop={"escape": escape}), str(tmp_path / "stay"))
    assert stay["escaped"] is False and stay["status"] == "completed"
    base_rows = read_metrics(base / "metrics.csv")
    assert stay["initial_train_loss"] == pytest.approx(base_rows[-1]["train_loss"], rel=0.2)

    spec = quick_spec(lr=3.0, epochs=200, init_checkpoint=start, optimizer={"delay": 8}, stop={"escape": escape})
    leave = run_training(spec, str(tmp_path / "leave"))
    assert leave["escaped"] is True and leave["status"] in ("escaped", "diverged")
    k = leave["epochs_to_escape"]
    rows = read_metrics(tmp_path / "leave" / "metrics.csv")
    l0 = leave["initial_train_loss"]
    assert rows[k]["epoch"] == k and rows[k]["train_loss"] > 1.5 * l0
    assert all(r["train_loss"] <= 1.5 * l0 for r in rows[1:k])

    run_training(quick_spec(epochs=0, init_checkpoint=start, perturb=0.3), str(tmp_path / "kick"))
    a, b = final_weights(str(base)), final_weights(str(tmp_path / "kick"))
    assert torch.cat([(b[n] - a[n]).flatten() for n in a]).norm().item() == pytest.approx(0.3, rel=1e-12)


# ------------------------------------------------------------------ checkpoints and resume


class Interrupt(Exception):
    pass


def test_resume_in_process_is_bit_for_bit(tmp_path):
    spec = quick_spec(
        batch_size=64, epochs=9, checkpoint_every=2, eval_every=2, lr_schedule={"kind": "step", "milestones": [5], "warmup_epochs": 1},
        optimizer={"workers": 4, "schedule": "random", "variant": "shifted", "momentum": 0.5, "weight_decay": 1e-3},
    )
    run_training(spec, str(tmp_path / "whole"))

    def stop_at_epoch_7(event, state):
        if event == "epoch" and state.epoch == 7:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_training(spec, str(tmp_path / "cut"), callbacks=[stop_at_epoch_7])
    assert load_checkpoint(str(tmp_path / "cut" / "checkpoint.pt"))["epoch"] == 6
    os.remove(tmp_path / "cut" / "metrics.csv")  # as Snakemake removes the outputs of a failed job
    summary = run_training(spec, str(tmp_path / "cut"))
    assert rows_without_seconds(tmp_path / "cut" / "metrics.csv") == rows_without_seconds(tmp_path / "whole" / "metrics.csv")
    assert_same_weights(final_weights(str(tmp_path / "cut")), final_weights(str(tmp_path / "whole")))
    assert summary["epochs_run"] == 9 and not (tmp_path / "cut" / "checkpoint.pt").exists()
    run = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert [r["epoch"] for r in run["resumed"]] == [6]
    again = run_training(spec, str(tmp_path / "cut"))  # a finished run is not trained again
    assert again == summary | {"seconds": again["seconds"]}


def test_settle_stops_a_run_whose_loss_stayed_low(tmp_path):
    """status 'settled' at the first epoch that ends `window` consecutive epochs below the level."""
    base = run_training(quick_spec(epochs=30, lr=0.05), str(tmp_path / "free"))
    losses = [r["train_loss"] for r in read_metrics(str(tmp_path / "free" / "metrics.csv"))][1:]
    level = sorted(losses)[len(losses) // 2]
    below = [loss < level for loss in losses]
    expected = next(e for e in range(4, 31) if all(below[e - 4:e]))  # brute force over the epochs
    spec = quick_spec(epochs=30, lr=0.05, stop={"settle": {"below": level, "window": 4}})
    summary = run_training(spec, str(tmp_path / "settled"))
    assert summary["status"] == "settled" and summary["settled_epoch"] == expected == summary["epochs_run"]
    assert base["status"] == "completed" and expected < 30


def test_finished_run_of_another_spec_is_redone(tmp_path):
    run_training(quick_spec(epochs=2), str(tmp_path / "a"))
    redone = run_training(quick_spec(epochs=2, lr=0.3), str(tmp_path / "a"))  # the options changed
    fresh = run_training(quick_spec(epochs=2, lr=0.3), str(tmp_path / "b"))
    def timeless(summary):
        return summary | {"seconds": 0, "final": summary["final"] | {"seconds": 0}}

    assert timeless(redone) == timeless(fresh)
    assert_same_weights(final_weights(str(tmp_path / "a")), final_weights(str(tmp_path / "b")))


def test_interrupted_run_of_another_spec_is_moved_aside_and_resumed_later(tmp_path):
    class Interrupt(Exception):
        pass

    def stop_at_epoch_3(event, state):
        if event == "epoch" and state.epoch == 3:
            raise Interrupt

    spec_a, spec_b = quick_spec(epochs=6, checkpoint_every=2), quick_spec(epochs=6, checkpoint_every=2, lr=0.3)
    with pytest.raises(Interrupt):
        run_training(spec_a, str(tmp_path / "run"), callbacks=[stop_at_epoch_3])
    run_training(spec_b, str(tmp_path / "run"))  # A's checkpoint (epoch 2) is moved aside, not lost
    parked = list((tmp_path / "run" / ".interrupted").glob("*/checkpoint.pt"))
    assert len(parked) == 1 and load_checkpoint(str(parked[0]))["epoch"] == 2
    summary = run_training(spec_a, str(tmp_path / "run"))  # A resumes from epoch 2
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [r["epoch"] for r in run["resumed"]] == [2] and summary["epochs_run"] == 6
    run_training(spec_a, str(tmp_path / "whole"))
    assert_same_weights(final_weights(str(tmp_path / "run")), final_weights(str(tmp_path / "whole")))


def test_damaged_checkpoints_name_the_file(tmp_path):
    run_training(quick_spec(epochs=1), str(tmp_path))
    good = (tmp_path / "final.pt").read_bytes()
    cases = {"truncated.pt": good[: len(good) // 2], "garbage.pt": b"not a checkpoint at all", "empty.pt": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match=name):
            load_checkpoint(str(tmp_path / name))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="foreign.pt.*not a delay-stability checkpoint"):
        load_checkpoint(str(tmp_path / "foreign.pt"))
    with pytest.raises(UserError, match="missing.pt.*does not exist"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "checkpoint.pt").write_bytes(good[:100])
    with pytest.raises(UserError, match="checkpoint.pt"):
        run_training(quick_spec(epochs=1), str(tmp_path / "out"))
    with pytest.raises(UserError, match="init_checkpoint|truncated"):
        run_training(quick_spec(epochs=1, init_checkpoint=str(tmp_path / "truncated.pt")), str(tmp_path / "o2"))


def test_model_from_checkpoint(tmp_path):
    run_training(quick_spec(epochs=2), str(tmp_path))
    model, spec = model_from_checkpoint(str(tmp_path / "final.pt"))
    assert spec == validate_spec(quick_spec(epochs=2))
    assert next(model.parameters()).dtype == torch.float64 and model.training
    assert_same_weights(model.state_dict(), final_weights(str(tmp_path)))


def test_delay_distribution_specs_reach_the_optimizer(tmp_path):
    pytest.importorskip("delay_stability.theory")
    spec = quick_spec(epochs=60, lr=0.01, optimizer={"delay": {"kind": "uniform", "low": 2, "high": 4}})
    summary = run_training(spec, str(tmp_path))
    stale = [r["mean_staleness"] for r in read_metrics(tmp_path / "metrics.csv")][5:]
    assert set(stale) <= {2.0, 3.0, 4.0} and len(set(stale)) == 3
    assert summary["mean_staleness"] == pytest.approx(3.0, abs=0.4)


def test_sigkill_and_resume_matches_an_uninterrupted_run(tmp_path):
    """`delay-stability train` killed with SIGKILL right after a checkpoint, then run again."""
    spec = quick_spec(
        epochs=150, batch_size=64, checkpoint_every=2, eval_every=5,
        optimizer={"workers": 4, "schedule": "random", "variant": "shifted", "momentum": 0.5},
    )
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "delay_stability.cli", "train", "--spec", str(spec_file), "--out", str(out)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "final.pt").exists() and not (out / "summary.json").exists()
    for name in ("metrics.csv", "run.json"):  # Snakemake deletes the declared outputs of a killed job
        if (out / name).exists():
            os.remove(out / name)

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run_training(spec, str(tmp_path / "whole"))
    assert rows_without_seconds(out / "metrics.csv") == rows_without_seconds(tmp_path / "whole" / "metrics.csv")
    assert_same_weights(final_weights(str(out)), final_weights(str(tmp_path / "whole")))
    resumed = json.loads((out / "run.json").read_text())["resumed"]
    assert len(resumed) == 1 and resumed[0]["epoch"] >= 2


def test_cli_reports_user_errors_in_one_line(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("model: mlp\nepochs: 1\nlr: 0.1\noptimizer: {variant: foo}\n")
    done = subprocess.run(
        [sys.executable, "-m", "delay_stability.cli", "train", "--spec", str(spec_file), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "spec key 'optimizer.variant': unknown value 'foo'" in done.stderr
    assert "Traceback" not in done.stderr


def test_replay_spec_reads_a_staleness_log_and_old_velocities_are_refused(tmp_path):
    """optimizer.landing_log reaches DelayedSGD as the log's landing order; a checkpoint whose
    velocities predate units (step units) is refused with a UserError, not loaded silently."""
    from delay_stability.train import Run, build_optimizer

    log = tmp_path / "staleness.csv"
    log.write_text("update,worker,step,pulled,staleness,time\n" + "".join(
        f"{t},{w},0,0,0,0.0\n" for t, w in enumerate([2, 3, 3, 1, 2, 1])))
    spec = validate_spec({"model": "mlp", "epochs": 1, "lr": 0.1,
                          "optimizer": {"workers": 3, "schedule": "replay", "landing_log": str(log)}})
    opt = build_optimizer(spec, build_model("mlp"))
    assert opt.landing_order == [1, 2, 2, 0, 1, 0]

    spec = validate_spec({"model": "mlp", "dataset_args": {"train_size": 64}, "epochs": 1, "lr": 0.1,
                          "batch_size": 32, "device": "cpu", "optimizer": {"delay": 2, "variant": "shifted", "momentum": 0.5}})
    run_training(spec, str(tmp_path / "run"))
    ckpt = torch.load(tmp_path / "run" / "final.pt", weights_only=True)
    del ckpt["optimizer"]["delayed"]["velocity_units"]
    run = Run(spec, str(tmp_path / "other"))
    with pytest.raises(UserError, match="velocity='step'"):
        run._restore(ckpt)


def test_compute_time_law_is_checked_in_the_spec():
    s = validate_spec({"model": "mlp", "epochs": 1, "lr": 0.1,
                       "optimizer": {"workers": 3, "schedule": "compute_time", "compute_time": {"law": "normal"}}})
    assert s["optimizer"]["compute_time"] == {"law": "normal", "mean": 1.0, "std": 0.125}
    with pytest.raises(UserError, match="optimizer.compute_time"):
        validate_spec({"model": "mlp", "epochs": 1, "lr": 0.1, "optimizer": {
            "workers": 3, "schedule": "compute_time", "compute_time": {"law": "uniform", "low": 2.0, "high": 1.0}}})


# ---------------------------------------------------------------- the stop rules, shared with the ensemble


def test_check_stop_is_pure_and_applies_each_rule_in_order():
    from delay_stability.spec import validate_spec
    from delay_stability.train import LoopState, check_stop, end_epoch

    def stop(**rules):
        return validate_spec({"model": "mlp", "dataset": "digits", "epochs": 1, "lr": 0.1, "stop": rules})["stop"]

    state = LoopState(initial_train_loss=2.0, losses=[1.0, 1.0, 1.0])
    before = state.to_dict()
    assert check_stop(state, stop(), float("nan"), None) == "diverged"
    assert check_stop(state, stop(divergence={"loss_factor": 3}), 6.5, None) == "diverged"  # 6.5 > 3 * 2
    assert check_stop(state, stop(divergence={"loss_factor": 3}), 5.5, None) is None
    steady = stop(steady_state={"window": 3, "rel_tol": 0.0})
    assert check_stop(state, steady, 1.0, None) == "steady"  # max - min = 0 over the last 3
    tol = stop(steady_state={"window": 3, "rel_tol": 0.0, "grad_norm_tol": 0.1})
    assert check_stop(state, tol, 1.0, 0.2) is None and check_stop(state, tol, 1.0, 0.05) == "steady"
    assert check_stop(state, tol, 1.0, None) is None
    assert state.to_dict() == before  # pure
    # end_epoch counts the settle run and the escape, then records the status
    rules = stop(settle={"below": 0.5, "window": 2}, escape={"factor": 1.0, "delta": 0.5, "stop": False})
    s = LoopState(initial_train_loss=2.0)
    assert [end_epoch(s, rules, e, loss, None) for e, loss in enumerate([0.4, 3.0, 0.4, 0.3], 1)] == [
        None, None, None, "settled"]
    assert (s.escaped, s.epochs_to_escape, s.settled_epoch, s.settle_run, s.epoch) == (True, 2, 4, 2, 4)
    assert s.losses == [0.4, 3.0, 0.4, 0.3]
    s = LoopState(initial_train_loss=2.0)
    assert end_epoch(s, stop(escape={"factor": 1.0, "delta": 0.5}), 1, 2.6, None) == "escaped"
    assert LoopState.from_dict(s.to_dict()).resumed[-1]["epoch"] == 1
