"""Training specs: every key with its default, validation, overrides and the deep merge.

A run is described by a *spec*, a mapping (YAML or JSON on disk). ``validate_spec`` checks it and
returns a copy with every default filled in (SPEC_DEFAULTS, OPTIMIZER_DEFAULTS, ...); a mistake is a
``UserError`` naming the key, e.g. ``spec key 'optimizer.momentum': must be in (-1, 1), got 1.0``.

This module imports no torch (nor anything that does), so that the workflow can validate every
training block of ``config.yaml`` when Snakemake builds its DAG, before any job runs, and so that
commands that only read a spec start in milliseconds. The names it checks against (models and their
arguments, datasets, schedules, variants) are the library's: ``tests/test_spec.py`` checks that they
agree with ``models.MODELS``, ``data`` and ``asgd``.
"""

from __future__ import annotations

import copy
import json
import math
import os

from .errors import UserError
from .theory import MITIGATIONS, VARIANTS, check_mitigation

#: Delay schedules of ``asgd.DelayedSGD``. Worker-based (M workers, every gradient lands once; they
#: model real workers): round robin (constant delay), random (uniform landing worker, geometric
#: staleness), gaussian (the authors' rule), compute_time (earliest finisher), replay (a real run's
#: landing order). iid: the delay of every step drawn i.i.d. from P(tau = k), read from a ring of
#: past gradients (the model of eq. 18-19; a gradient may land twice or never).
WORKER_SCHEDULES = ("round_robin", "random", "gaussian", "compute_time", "replay")
SCHEDULES = WORKER_SCHEDULES + ("iid",)
#: Old names that still work: ``distribution`` was the iid ring's name.
SCHEDULE_ALIASES = {"distribution": "iid"}
#: Compute-time laws of ``schedule: compute_time``.
COMPUTE_TIME_LAWS = ("exponential", "normal", "uniform")
#: Velocity conventions (asgd.update): gradient units with the current eta applied at the step (torch),
#: or the older form whose velocity carries eta; and the first step: u_0 = 0, or torch's u = g.
VELOCITY_UNITS = ("gradient", "step")
VELOCITY_STARTS = ("zero", "gradient")
#: Which parameters weight decay applies to: all, or the weights of convolutions and linear layers
#: (not biases, not BatchNorm scales and shifts: the authors' ResNets).
WEIGHT_DECAY_ON = ("all", "weights")
LOSSES = ("cross_entropy", "mse")
DEVICES = ("auto", "cpu", "cuda")
DTYPE_NAMES = ("float32", "float64")
LR_KINDS = ("constant", "step")
DELAY_KINDS = ("uniform", "gaussian", "geometric", "probs")

#: The keyword arguments of each network of ``models.MODELS`` (its builder's signature), with defaults.
MODEL_ARGS = {
    "mlp": {"hidden": (64,), "activation": "relu", "in_features": 64, "num_classes": 10},
    "cnn_digits": {"batchnorm": False, "channels": (16, 32), "hidden": 64, "in_channels": 1, "num_classes": 10},
    "mnist_cnn": {"num_classes": 10},
    "fc3x1024": {"in_features": 784, "width": 1024, "num_classes": 10},
    "vgg11": {"num_classes": 10, "batchnorm": True},
    "resnet44": {"num_classes": 10},
    "wrn16_4": {"num_classes": 100},
    "c3": {"num_classes": 100},
    "cifar10_quick": {"num_classes": 10},
    "resnet50": {"num_classes": 1000},
    "resnet_digits": {"width": 8, "blocks": 1, "in_channels": 1, "num_classes": 10},
}
MODEL_NAMES = tuple(MODEL_ARGS)

#: The keys each dataset accepts in ``dataset_args``, with their defaults.
DATASET_ARGS = {
    "digits": {"train_size": 1297, "split_seed": 0},
    "mnist1d": {"num_samples": 5000, "seed": 42},  # the package's defaults: 4,000 / 1,000 signals
    "mnist": {"root": "data", "download": False, "train_subset": None, "val_subset": None},
    "cifar10": {"root": "data", "download": False, "train_subset": None, "val_subset": None, "verify": True},
    "cifar100": {"root": "data", "download": False, "train_subset": None, "val_subset": None, "verify": True},
    "imagenet": {"root": None, "workers": 8, "image_size": 224, "prefetch": 4},
}
DATASETS = tuple(DATASET_ARGS)
DIGITS_SIZE = 1797


def dataset_args_with_defaults(name: str, args: dict | None) -> dict:
    """Check ``dataset_args`` for ``name`` and fill in defaults (``data_dir`` is an alias of ``root``)."""
    if name not in DATASET_ARGS:
        raise UserError(f"spec key 'dataset': unknown value {name!r} (choose {', '.join(DATASETS)})")
    args = dict(args or {})
    if "data_dir" in args and "root" in DATASET_ARGS[name]:
        if "root" in args:
            raise UserError("spec key 'dataset_args': give either 'root' or 'data_dir', not both")
        args["root"] = args.pop("data_dir")
    out = dict(DATASET_ARGS[name])
    for key, value in args.items():
        if key not in out:
            raise UserError(
                f"spec key 'dataset_args.{key}': not an argument of dataset {name!r} (choose {', '.join(out)})"
            )
        out[key] = value
    for key in ("train_size", "train_subset", "val_subset", "workers", "image_size", "split_seed", "prefetch",
                "num_samples", "seed"):
        value = out.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise UserError(f"spec key 'dataset_args.{key}': expected a non-negative integer, got {value!r}")
    if name == "imagenet" and out["prefetch"] < 1:
        raise UserError(f"spec key 'dataset_args.prefetch': batches queued per worker, must be >= 1, got {out['prefetch']}")
    if name == "mnist1d" and out["num_samples"] < 50:
        raise UserError(f"spec key 'dataset_args.num_samples': at least 50 (5 per class, 80% of them to train), "
                        f"got {out['num_samples']}")
    if name == "digits" and not 1 <= out["train_size"] < DIGITS_SIZE:
        raise UserError(f"spec key 'dataset_args.train_size': must be in 1..{DIGITS_SIZE - 1}, got {out['train_size']}")
    if out.get("root") is not None and not isinstance(out["root"], str):
        raise UserError(f"spec key 'dataset_args.root': expected a folder path, got {out['root']!r}")
    if name == "imagenet" and not out["root"]:
        raise UserError("spec key 'dataset_args.root': imagenet needs the path of an ImageFolder tree (train/, val/)")
    if "verify" in out and not isinstance(out["verify"], bool):
        raise UserError(f"spec key 'dataset_args.verify': expected true or false, got {out['verify']!r}")
    if "download" in out and not isinstance(out["download"], bool):
        raise UserError(f"spec key 'dataset_args.download': expected true or false, got {out['download']!r}")
    return out


# ================================================================ the spec

REQUIRED = object()
SPEC_DEFAULTS = {
    "model": REQUIRED,
    "model_args": {},
    "dataset": "digits",
    "dataset_args": {},
    "loss": "cross_entropy",
    "dtype": "float32",
    "device": "auto",
    "seed": 0,
    "threads": None,
    "epochs": REQUIRED,
    "batch_size": 128,
    "lr": REQUIRED,
    "lr_schedule": {"kind": "constant"},
    "optimizer": {},
    "augment": False,
    "eval_every": 1,
    "checkpoint_every": None,
    "stop": {},
    "init_checkpoint": None,
    "perturb": 0.0,
    "performance": {},
}
#: How the step is computed, not what it computes (up to rounding): channels_last memory format,
#: bf16 autocast and torch.compile, all on CUDA only (a CPU run ignores them; see train.Run).
PERFORMANCE_DEFAULTS = {"channels_last": False, "bf16": False, "compile": False}
OPTIMIZER_DEFAULTS = {
    "delay": 0, "workers": None, "schedule": None, "momentum": 0.0, "variant": "plain",
    "dampening": True, "weight_decay": 0.0, "weight_decay_on": "all",
    "velocity": "gradient", "velocity_start": "zero",
    "spread": None, "compute_time": None, "landing_log": None,
}
STEADY_DEFAULTS = {"window": 50, "rel_tol": 1e-4, "grad_norm_tol": None}
DIVERGENCE_DEFAULTS = {"loss_factor": 1e4}
ESCAPE_DEFAULTS = {"factor": 2.0, "delta": 0.0, "stop": True}
SETTLE_DEFAULTS = {"below": REQUIRED, "window": 1}


def _bad(key: str, message: str) -> UserError:
    return UserError(f"spec key '{key}': {message}")


def _section(value, key: str, defaults: dict) -> dict:
    """A mapping with no unknown keys, defaults filled in; REQUIRED keys must be present."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _bad(key, f"expected a mapping, got {value!r}")
    prefix = f"{key}." if key else ""
    for k in value:
        if k not in defaults:
            raise _bad(f"{prefix}{k}", f"unknown key (choose {', '.join(defaults)})")
    out = {}
    for k, default in defaults.items():
        if k not in value and default is REQUIRED:
            raise _bad(f"{prefix}{k}", "required")
        out[k] = copy.deepcopy(value.get(k, default))
    return out


def _int(key, value, minimum=None, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(key, f"expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise _bad(key, f"must be >= {minimum}, got {value}")
    return value


def _float(key, value, minimum=None, positive=False, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, str):  # PyYAML reads 1e-2 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(key, f"expected a finite number, got {value!r}")
    value = float(value)
    if positive and not value > 0:
        raise _bad(key, f"must be > 0, got {value}")
    if minimum is not None and value < minimum:
        raise _bad(key, f"must be >= {minimum}, got {value}")
    return value


def _choice(key, value, choices):
    if value not in choices:
        raise _bad(key, f"unknown value {value!r} (choose {', '.join(map(str, choices))})")
    return value


def _bool(key, value):
    if not isinstance(value, bool):
        raise _bad(key, f"expected true or false, got {value!r}")
    return value


#: validate_spec's results by ``repr`` of the spec (it is a pure function of its argument, and repr
#: tells 1 from 1.0 and True, and a list from a tuple): the config check and the workflow's plans
#: validate thousands of specs, most of them the same from one check to the next.
_VALIDATED: dict[str, dict] = {}
_VALIDATED_MAX = 50_000


def copy_tree(obj):
    """A copy of nested dicts and lists (the other values are shared: a spec's are immutable);
    several times faster than ``copy.deepcopy`` on specs."""
    if isinstance(obj, dict):
        return {k: copy_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [copy_tree(v) for v in obj]
    return obj


def _validated(spec: dict) -> dict:
    """``_validate_spec(spec)``, remembered by ``repr(spec)`` (the remembered dict: never modify it)."""
    key = repr(spec)
    found = _VALIDATED.get(key)
    if found is None:
        seed = spec.get("seed") if isinstance(spec, dict) else None
        if type(seed) is int and seed > 0:
            # the seed is checked alone (an integer >= 0) and nothing else depends on it: a grid's
            # seeds share one validation (the same dict as seed 0's, with this seed)
            found = {**_validated({**spec, "seed": 0}), "seed": seed}
        else:
            found = _validate_spec(spec)
        if len(_VALIDATED) >= _VALIDATED_MAX:
            _VALIDATED.clear()
        _VALIDATED[key] = found
    return found


def validate_spec(spec: dict) -> dict:
    """Check a training spec and return a copy with every default filled in (``_validate_spec``,
    remembered: a new copy of the same result each time)."""
    return copy_tree(_validated(spec))


def check_spec(spec: dict) -> None:
    """``validate_spec`` for its UserError only (no copy of the result): the config check's and the
    grids' way to check thousands of specs."""
    _validated(spec)


def _validate_spec(spec: dict) -> dict:
    """Check a training spec and return a copy with every default filled in.

    Keys (defaults in SPEC_DEFAULTS): model, model_args, dataset (digits | mnist1d | mnist |
    cifar10 | cifar100 | imagenet), dataset_args, loss (cross_entropy | mse), dtype, device (auto | cpu |
    cuda), seed, threads, epochs, batch_size (0 = full batch), lr, lr_schedule ({kind: constant} or
    {kind: step, milestones, gamma}, both with warmup_epochs and warmup_start), optimizer (delay,
    workers, schedule (SCHEDULES; spread: gaussian, compute_time, landing_log: replay), momentum,
    variant, dampening, weight_decay, weight_decay_on, velocity, velocity_start), augment, eval_every, checkpoint_every (null =
    about every 5% of the epochs), stop ({steady_state, divergence, escape}), init_checkpoint,
    perturb, performance ({channels_last, bf16, compile}: CUDA only). Raises UserError naming the
    offending key.
    """
    s = _section(spec, "", SPEC_DEFAULTS)
    s["model"] = _choice("model", s["model"], MODEL_NAMES)
    s["model_args"] = _model_args(s["model"], s["model_args"])
    s["dataset"] = _choice("dataset", s["dataset"], DATASETS)
    s["dataset_args"] = dataset_args_with_defaults(s["dataset"], s["dataset_args"])
    s["loss"] = _choice("loss", s["loss"], LOSSES)
    s["dtype"] = _choice("dtype", s["dtype"], DTYPE_NAMES)
    s["device"] = _choice("device", s["device"], DEVICES)
    s["seed"] = _int("seed", s["seed"], 0)
    s["threads"] = _int("threads", s["threads"], 1, allow_none=True)
    s["epochs"] = _int("epochs", s["epochs"], 0)
    s["batch_size"] = _int("batch_size", s["batch_size"], 0)
    s["lr"] = _float("lr", s["lr"], positive=True)
    s["lr_schedule"] = _lr_schedule(s["lr_schedule"])
    s["optimizer"] = _optimizer(s["optimizer"])
    s["augment"] = _bool("augment", s["augment"])
    if s["augment"] and s["dataset"] in ("digits", "mnist1d"):
        raise _bad("augment", f"augmentation is for mnist, cifar10, cifar100 and imagenet, not {s['dataset']}")
    s["eval_every"] = _int("eval_every", s["eval_every"], 1)
    s["checkpoint_every"] = _int("checkpoint_every", s["checkpoint_every"], 1, allow_none=True)
    s["stop"] = _stop(s["stop"])
    if s["init_checkpoint"] is not None and not isinstance(s["init_checkpoint"], str):
        raise _bad("init_checkpoint", f"expected a path, got {s['init_checkpoint']!r}")
    s["perturb"] = _float("perturb", s["perturb"], minimum=0.0)
    s["performance"] = _section(s["performance"], "performance", PERFORMANCE_DEFAULTS)
    for key, value in s["performance"].items():
        _bool(f"performance.{key}", value)
    return s


def _model_args(name, args):
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise _bad("model_args", f"expected a mapping, got {args!r}")
    allowed = MODEL_ARGS[name]
    for k, value in args.items():
        if k not in allowed:
            raise _bad(f"model_args.{k}", f"not an argument of model {name!r} (choose {', '.join(allowed)})")
        _check_like(f"model_args.{k}", value, allowed[k])
    return dict(args)


def _check_like(key, value, default):
    """A model argument of the same kind as its default: a bool, a positive integer, a word, or a
    non-empty list of positive integers (layer widths)."""
    if isinstance(default, bool):
        _bool(key, value)
    elif isinstance(default, int):
        _int(key, value, 1)
    elif isinstance(default, str):
        if not isinstance(value, str) or not value:
            raise _bad(key, f"expected a name, got {value!r}")
    elif isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or not value:
            raise _bad(key, f"expected a non-empty list of widths, got {value!r}")
        for v in value:
            _int(key, v, 1)


def _lr_schedule(value):
    if not isinstance(value, dict) or "kind" not in value:
        raise _bad("lr_schedule", f"expected a mapping with 'kind' ({', '.join(LR_KINDS)}), got {value!r}")
    kind = _choice("lr_schedule.kind", value["kind"], LR_KINDS)
    defaults = {"kind": kind, "warmup_epochs": 0, "warmup_start": 0.0}
    if kind == "step":
        defaults.update(milestones=REQUIRED, gamma=0.1)
    s = _section(value, "lr_schedule", defaults)
    s["warmup_epochs"] = _int("lr_schedule.warmup_epochs", s["warmup_epochs"], 0)
    s["warmup_start"] = _float("lr_schedule.warmup_start", s["warmup_start"], minimum=0.0)
    if s["warmup_start"] > 1:
        raise _bad("lr_schedule.warmup_start", f"the warm-up starts at a fraction of lr in [0, 1], got {s['warmup_start']}")
    if kind == "step":
        if not isinstance(s["milestones"], list):
            raise _bad("lr_schedule.milestones", f"expected a list of epochs, got {s['milestones']!r}")
        s["milestones"] = sorted(_int("lr_schedule.milestones", m, 1) for m in s["milestones"])
        s["gamma"] = _float("lr_schedule.gamma", s["gamma"], positive=True)
    return s


def _optimizer(value):
    mitigation = None
    if isinstance(value, dict) and "mitigation" in value:  # optional: absent from specs without one
        value = dict(value)
        mitigation = _mitigation(value.pop("mitigation"))
    s = _section(value, "optimizer", OPTIMIZER_DEFAULTS)
    s["delay"] = _delay(s["delay"])
    s["workers"] = _int("optimizer.workers", s["workers"], 1, allow_none=True)
    distribution = isinstance(s["delay"], dict)
    if s["schedule"] is None:
        s["schedule"] = "iid" if distribution else "round_robin"
    s["schedule"] = _choice("optimizer.schedule", s["schedule"], SCHEDULES + tuple(SCHEDULE_ALIASES))
    if distribution != (SCHEDULE_ALIASES.get(s["schedule"], s["schedule"]) == "iid"):
        raise _bad("optimizer.schedule", f"schedule {s['schedule']!r} does not fit delay {s['delay']!r}")
    _schedule_args(s)
    if not distribution and s["workers"] is not None and s["delay"] not in (0, s["workers"] - 1):
        raise _bad("optimizer.workers", f"workers={s['workers']} disagrees with delay={s['delay']!r}")
    s["momentum"] = _float("optimizer.momentum", s["momentum"])
    if not -1 < s["momentum"] < 1:
        raise _bad("optimizer.momentum", f"must be in (-1, 1), got {s['momentum']}")
    s["variant"] = _choice("optimizer.variant", s["variant"], VARIANTS)
    if s["variant"] == "plain" and s["momentum"] != 0:
        raise _bad("optimizer.variant", "momentum is non-zero: choose variant momentum or shifted")
    s["dampening"] = _bool("optimizer.dampening", s["dampening"])
    s["weight_decay"] = _float("optimizer.weight_decay", s["weight_decay"], minimum=0.0)
    s["weight_decay_on"] = _choice("optimizer.weight_decay_on", s["weight_decay_on"], WEIGHT_DECAY_ON)
    s["velocity"] = _choice("optimizer.velocity", s["velocity"], VELOCITY_UNITS)
    s["velocity_start"] = _choice("optimizer.velocity_start", s["velocity_start"], VELOCITY_STARTS)
    if s["velocity"] == "step" and s["velocity_start"] != "zero":
        raise _bad("optimizer.velocity_start", "velocity 'step' starts from zero velocity")
    if mitigation is not None:
        if s["variant"] != "plain":
            raise _bad("optimizer.mitigation", f"a mitigation replaces the update: it needs variant plain, "
                                               f"not {s['variant']!r}")
        s["mitigation"] = mitigation
    return s


def _schedule_args(s: dict) -> None:
    """A landing rule's own keys (spread: gaussian; compute_time; landing_log: replay), each only
    with its schedule."""
    owner = {"spread": "gaussian", "compute_time": "compute_time", "landing_log": "replay"}
    for key, schedule in owner.items():
        if s[key] is not None and s["schedule"] != schedule:
            raise _bad(f"optimizer.{key}", f"is only used with schedule {schedule!r}, not {s['schedule']!r}")
    if s["spread"] is not None:
        s["spread"] = _float("optimizer.spread", s["spread"], positive=True)
    if s["compute_time"] is not None:
        try:
            s["compute_time"] = check_compute_time(s["compute_time"])
        except ValueError as exc:
            raise _bad("optimizer.compute_time", str(exc)) from None
    if s["schedule"] == "replay" and not isinstance(s["landing_log"], str):
        raise _bad("optimizer.landing_log", "schedule 'replay' needs the path of a staleness.csv "
                                            "(delay_stability.server's log)")


def check_compute_time(law) -> dict:
    """A compute-time law {law: exponential, mean} | {law: normal, mean, std} | {law: uniform, low, high}
    with defaults filled in (mean 1, std mean/8); ValueError naming what is wrong."""
    if not isinstance(law, dict) or law.get("law") not in COMPUTE_TIME_LAWS:
        raise ValueError(f"compute_time must be a mapping with law one of {', '.join(COMPUTE_TIME_LAWS)}, "
                         f"got {law!r}")
    keys = {"exponential": {"mean": 1.0}, "normal": {"mean": 1.0, "std": None},
            "uniform": {"low": 0.5, "high": 1.5}}[law["law"]]
    unknown = sorted(set(law) - set(keys) - {"law"})
    if unknown:
        raise ValueError(f"compute_time law {law['law']!r} takes {', '.join(keys)}, not {', '.join(unknown)}")
    out = {"law": law["law"], **keys, **{k: v for k, v in law.items() if k != "law"}}
    if out["law"] == "normal" and out["std"] is None:
        out["std"] = out["mean"] / 8.0
    for k in keys:
        if isinstance(out[k], bool) or not isinstance(out[k], (int, float)) or not out[k] > 0:
            raise ValueError(f"compute_time {k} must be a number > 0, got {out[k]!r}")
        out[k] = float(out[k])
    if out["law"] == "uniform" and not out["high"] > out["low"]:
        raise ValueError("compute_time: uniform needs high > low")
    return out


def _mitigation(value):
    """optimizer.mitigation: null (plain delayed SGD) or {name: <one of theory.MITIGATIONS>, <its
    hyperparameters>} (defaults theory.MITIGATION_DEFAULTS, filled in)."""
    if value is None:
        return None
    if not isinstance(value, dict) or "name" not in value:
        raise _bad("optimizer.mitigation", f"expected null or a mapping with a name "
                                           f"(one of {', '.join(MITIGATIONS)}), got {value!r}")
    args = {k: v for k, v in value.items() if k != "name"}
    try:
        name, hp = check_mitigation(value["name"], args)
    except ValueError as exc:
        raise _bad("optimizer.mitigation", str(exc)) from None
    if name == "delay-adaptive-threshold" and hp["smoothness"] is None:
        raise _bad("optimizer.mitigation.smoothness", "delay-adaptive-threshold needs smoothness L (e.g. the sharpness)")
    cast = {k: (None if v is None else int(v) if k in ("workers", "tau_c") else float(v)) for k, v in hp.items()}
    return {"name": name, **cast}


def _delay(value):
    """An int tau >= 0, or {kind: uniform, low, high} | {gaussian, mean} | {geometric, q} | {probs, probs}."""
    if not isinstance(value, dict):
        return _int("optimizer.delay", value, 0)
    kind = _choice("optimizer.delay.kind", value.get("kind"), DELAY_KINDS)
    fields = {"uniform": ("low", "high"), "gaussian": ("mean",), "geometric": ("q",), "probs": ("probs",)}[kind]
    s = _section(value, "optimizer.delay", {"kind": kind, **{f: REQUIRED for f in fields}})
    if kind == "uniform":
        s["low"] = _int("optimizer.delay.low", s["low"], 0)
        s["high"] = _int("optimizer.delay.high", s["high"], s["low"])
    elif kind == "gaussian":
        s["mean"] = _float("optimizer.delay.mean", s["mean"], positive=True)
    elif kind == "geometric":
        s["q"] = _float("optimizer.delay.q", s["q"], minimum=0.0)
        if not s["q"] < 1:
            raise _bad("optimizer.delay.q", f"must be in [0, 1), got {s['q']}")
    else:
        if not isinstance(s["probs"], list) or not s["probs"]:
            raise _bad("optimizer.delay.probs", "expected a non-empty list of probabilities P(tau=k), k=0..K")
        s["probs"] = [_float("optimizer.delay.probs", p, minimum=0.0) for p in s["probs"]]
        if abs(sum(s["probs"]) - 1) > 1e-6:
            raise _bad("optimizer.delay.probs", f"probabilities must sum to 1 (they sum to {sum(s['probs']):.6g})")
    return s


def _stop(value):
    s = _section(value, "stop", {"steady_state": None, "divergence": {}, "escape": None, "settle": None})
    if s["steady_state"] is not None:
        st = _section(s["steady_state"], "stop.steady_state", STEADY_DEFAULTS)
        st["window"] = _int("stop.steady_state.window", st["window"], 1)
        st["rel_tol"] = _float("stop.steady_state.rel_tol", st["rel_tol"], minimum=0.0)
        st["grad_norm_tol"] = _float("stop.steady_state.grad_norm_tol", st["grad_norm_tol"], minimum=0.0, allow_none=True)
        s["steady_state"] = st
    dv = _section(s["divergence"], "stop.divergence", DIVERGENCE_DEFAULTS)
    dv["loss_factor"] = _float("stop.divergence.loss_factor", dv["loss_factor"], positive=True)
    s["divergence"] = dv
    if s["escape"] is not None:
        es = _section(s["escape"], "stop.escape", ESCAPE_DEFAULTS)
        es["factor"] = _float("stop.escape.factor", es["factor"], minimum=0.0)
        es["delta"] = _float("stop.escape.delta", es["delta"], minimum=0.0)
        es["stop"] = _bool("stop.escape.stop", es["stop"])
        s["escape"] = es
    if s["settle"] is not None:
        se = _section(s["settle"], "stop.settle", SETTLE_DEFAULTS)
        se["below"] = _float("stop.settle.below", se["below"], minimum=0.0)
        se["window"] = _int("stop.settle.window", se["window"], 1)
        s["settle"] = se
    return s


def delay_probabilities(delay: dict) -> list[float]:
    """P(tau = k), k = 0..K, for a delay distribution of the spec (theory.py's distributions)."""
    if delay["kind"] == "probs":
        return list(delay["probs"])
    from . import theory

    try:
        if delay["kind"] == "uniform":
            probs = theory.uniform_delay(delay["low"], delay["high"])
        elif delay["kind"] == "gaussian":
            probs = theory.gaussian_delay(delay["mean"])
        else:
            probs = theory.geometric_delay(delay["q"])
    except ValueError as exc:
        raise _bad("optimizer.delay", str(exc)) from None
    return [float(p) for p in probs]


def mean_delay(delay) -> float:
    """E[tau] of a spec delay (checked as ``optimizer.delay``): tau itself, or sum_k k P(tau = k)."""
    delay = _delay(delay)
    if not isinstance(delay, dict):
        return float(delay)
    return float(sum(k * p for k, p in enumerate(delay_probabilities(delay))))


def spec_differences(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += spec_differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def deep_merge(base: dict, override: dict | None) -> dict:
    """A copy of ``base`` with ``override`` merged in, recursively for nested dicts."""
    out = dict(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_spec(path: str) -> dict:
    """A spec from a YAML or JSON file (UserError naming the file if missing or malformed, with the
    line and column of a syntax error or a duplicated key)."""
    if not os.path.isfile(path):
        raise UserError(f"--spec: no such file: {path}")
    from .files import load_yaml_text

    try:
        with open(path) as f:
            text = f.read()
        spec = json.loads(text) if path.endswith(".json") else load_yaml_text(text, path)
    except json.JSONDecodeError as exc:
        raise UserError(f"--spec: cannot parse {path}, line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"--spec: cannot parse {path}: {exc}") from None
    except UserError as exc:
        raise UserError(f"--spec: {exc}") from None
    if not isinstance(spec, dict):
        raise UserError(f"--spec: {path} must hold a mapping of spec keys")
    return spec


def apply_overrides(spec: dict, assignments) -> dict:
    """``key.sub=value`` assignments (values parsed as YAML: numbers, true/false, null, lists)."""
    import yaml

    spec = copy.deepcopy(spec)
    for item in assignments or ():
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. optimizer.delay=8")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UserError(f"--set {item!r}: cannot parse the value") from None
        node = spec
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return spec


# ------------------------------------------------------------------------------------------------
# What trains as one batched ensemble (``delay_stability.ensemble``); here because it is a property
# of the specs alone, and the workflow asks it when it builds the DAG (without importing torch).
# ------------------------------------------------------------------------------------------------

#: Models that batch: the quick stand-ins (BatchNorm per member: batch and running statistics of its
#: own) and the paper-scale networks without BatchNorm.
BATCHED_MODELS = ("mlp", "cnn_digits", "resnet_digits", "mnist_cnn", "fc3x1024", "cifar10_quick")
#: Delay schedules that batch: every one (each member draws its own landing worker, or its i.i.d.
#: delay from a shared distribution, as its DelayedSGD does).
ENSEMBLE_SCHEDULES = SCHEDULES
#: Spec keys every member of an ensemble must share.
ENSEMBLE_SHARED_KEYS = ("model", "model_args", "dataset", "dataset_args", "dtype", "device", "loss",
                        "batch_size", "epochs", "eval_every", "checkpoint_every", "threads")


def ensemble_problem(specs: list[dict]) -> str | None:
    """None when these validated specs can train as one ensemble, else the reason."""
    if not specs:
        return "no specs given"
    first = specs[0]
    for i, s in enumerate(specs):
        if s["model"] not in BATCHED_MODELS:
            return (f"spec {i}: model {s['model']!r} is a paper-scale network, trained one run per job "
                    f"(batched: {', '.join(BATCHED_MODELS)})")
        if s["dataset"] == "imagenet":
            return f"spec {i}: imagenet is streamed from disk and is not batched"
        if s["augment"]:
            return f"spec {i}: augment is not batched"
        if any(s["performance"].values()):
            return f"spec {i}: performance settings (channels_last, bf16, compile) are not batched"
        o = s["optimizer"]
        if o.get("mitigation"):
            return f"spec {i}: delay mitigation {o['mitigation']['name']!r} is not batched (train it with train.run_training)"
        if o["velocity"] != first["optimizer"]["velocity"]:
            return (f"spec {i} has velocity {o['velocity']!r} but spec 0 has {first['optimizer']['velocity']!r}; "
                    "members must share the velocity convention")
        if o["schedule"] not in ENSEMBLE_SCHEDULES:
            return f"spec {i}: schedule {o['schedule']!r} is not batched (batched: {', '.join(ENSEMBLE_SCHEDULES)})"
        if o["schedule"] != first["optimizer"]["schedule"]:
            return (f"spec {i} has schedule {o['schedule']!r} but spec 0 has {first['optimizer']['schedule']!r}; "
                    "members must share the schedule")
        if s["init_checkpoint"]:
            return f"spec {i}: init_checkpoint is not batched"
        if s["perturb"]:
            return f"spec {i}: perturb is not batched"
        for key in ENSEMBLE_SHARED_KEYS:
            if s[key] != first[key]:
                return f"spec {i} differs from spec 0 in {key!r} ({s[key]!r} vs {first[key]!r}); members must share it"
        if _ensemble_delay(s) != _ensemble_delay(first):
            return f"spec {i} has delay {_ensemble_delay(s)} but spec 0 has {_ensemble_delay(first)}; members must share the delay"
    return None


def _ensemble_delay(spec: dict) -> int | dict:
    o = spec["optimizer"]
    return o["workers"] - 1 if o["workers"] is not None else o["delay"]


def can_ensemble(specs) -> tuple[bool, str]:
    """(True, "") when ``run_ensemble`` takes these specs, else (False, the reason) -- then train
    each with ``train.run_training``."""
    try:
        specs = [validate_spec(s) for s in specs]
    except UserError as exc:
        return False, str(exc)
    reason = ensemble_problem(specs)
    return (reason is None), (reason or "")


def ensemble_groups(specs: list[dict], min_members: int = 2) -> list[list[int]]:
    """Indices of ``specs`` grouped into ensembles: the specs that share what members must
    share (ENSEMBLE_SHARED_KEYS, the delay and the schedule), in order of first appearance, each group
    of at least ``min_members`` that ``ensemble_problem`` accepts; the specs of no group train one by one."""
    specs = [validate_spec(s) for s in specs]
    by_key: dict = {}
    for i, s in enumerate(specs):
        o = s["optimizer"]
        key = json.dumps([[s[k] for k in ENSEMBLE_SHARED_KEYS], o["schedule"], o["delay"], o["workers"]],
                         sort_keys=True, default=str)
        by_key.setdefault(key, []).append(i)
    return [idx for idx in by_key.values()
            if len(idx) >= min_members and ensemble_problem([specs[i] for i in idx]) is None]
