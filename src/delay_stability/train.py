"""The training engine behind ``delay-stability train --spec FILE --out DIR``.

A run is described by a *spec* (a dict, YAML or JSON on disk; ``validate_spec`` lists every key and
its default) and writes into its output folder:

    metrics.csv     one row per evaluation epoch, columns METRIC_COLUMNS (row 0 = starting weights)
    summary.json    status (completed | steady | settled | diverged | escaped), epochs run, final metrics, ...
    run.json        provenance: spec, seed, package and torch versions, device, host, start/end
    checkpoint.pt   rolling checkpoint every ``checkpoint_every`` epochs (removed when the run ends)
    final.pt        the same format, at the end

Training (full batch, large batch or minibatch) uses DelayedSGD (asgd.py), so the update applied at
step t is the gradient taken at w_{t - tau_t} (eq. 2; momentum eq. 9, shifted momentum eq. 10).
The train loss/error of an epoch are the mean over that epoch's training steps of the loss/error of
the step's own forward pass (full batch: exactly the training loss at the step's weights).

Stopping (checked once per epoch, from that epoch's train loss L; L0 = train loss at the starting
weights, measured in the training step's mode over the training set before the first step):
    divergence     L is NaN/inf, or L > loss_factor * L0  (status "diverged"; the run ends cleanly)
    escape         L > factor * L0 + delta (or not finite): ``escaped`` and ``epochs_to_escape`` in
                   the summary; with ``stop: true`` the run ends with status "escaped"
    steady state   over the last ``window`` epochs (max L - min L) <= rel_tol * mean L, and the norm
                   of the last step's gradient <= grad_norm_tol when given (status "steady")
    settle         L < below for ``window`` consecutive epochs (status "settled"): a continuation
                   whose perturbation has died out, checked before the steady state

Resume: when ``out_dir`` holds a checkpoint of the same spec, the run continues from it and ends
bit-for-bit as an uninterrupted one (model, optimizer with its in-flight updates, every RNG, the
loop's own state and the metric rows are in the checkpoint). A checkpoint of another spec is an
error. Deterministic on CPU for a given seed (and thread count).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import socket
import sys
import time
from datetime import datetime, timezone
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from . import __version__
from .asgd import SCHEDULES, VARIANTS, DelayedSGD
from .data import DATASETS, DTYPES, dataset_args_with_defaults, load_dataset
from .errors import UserError
from .files import atomic_write as _atomic_write
from .files import write_csv, write_json
from .models import MODELS, build_model

#: Columns of metrics.csv, in order (the one place they are named).
METRIC_COLUMNS = (
    "epoch", "step", "lr", "train_loss", "train_error", "val_loss", "val_error",
    "weight_norm", "dist_from_init", "mean_staleness", "seconds",
)
CHECKPOINT_FORMAT = "delay-stability-checkpoint"
CHECKPOINT_VERSION = 1
LOSSES = ("cross_entropy", "mse")
DEVICES = ("auto", "cpu", "cuda")
LR_KINDS = ("constant", "step")
DELAY_KINDS = ("uniform", "gaussian", "geometric", "probs")
NAN_CHECK_EVERY = 50  # minibatch training: look for a NaN loss every this many steps


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
}
OPTIMIZER_DEFAULTS = {
    "delay": 0, "workers": None, "schedule": None, "momentum": 0.0, "variant": "plain",
    "dampening": True, "weight_decay": 0.0,
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


def validate_spec(spec: dict) -> dict:
    """Check a training spec and return a copy with every default filled in.

    Keys (defaults in SPEC_DEFAULTS): model, model_args, dataset (digits | mnist | cifar10 |
    cifar100 | imagenet), dataset_args, loss (cross_entropy | mse), dtype, device (auto | cpu |
    cuda), seed, threads, epochs, batch_size (0 = full batch), lr, lr_schedule ({kind: constant} or
    {kind: step, milestones, gamma}, both with warmup_epochs), optimizer (delay, workers, schedule,
    momentum, variant, dampening, weight_decay), augment, eval_every, checkpoint_every (null =
    about every 5% of the epochs), stop ({steady_state, divergence, escape}), init_checkpoint,
    perturb. Raises UserError naming the offending key.
    """
    s = _section(spec, "", SPEC_DEFAULTS)
    s["model"] = _choice("model", s["model"], tuple(MODELS))
    s["model_args"] = _model_args(s["model"], s["model_args"])
    s["dataset"] = _choice("dataset", s["dataset"], DATASETS)
    s["dataset_args"] = dataset_args_with_defaults(s["dataset"], s["dataset_args"])
    s["loss"] = _choice("loss", s["loss"], LOSSES)
    s["dtype"] = _choice("dtype", s["dtype"], tuple(DTYPES))
    s["device"] = _choice("device", s["device"], DEVICES)
    s["seed"] = _int("seed", s["seed"], 0)
    s["threads"] = _int("threads", s["threads"], 1, allow_none=True)
    s["epochs"] = _int("epochs", s["epochs"], 0)
    s["batch_size"] = _int("batch_size", s["batch_size"], 0)
    s["lr"] = _float("lr", s["lr"], positive=True)
    s["lr_schedule"] = _lr_schedule(s["lr_schedule"])
    s["optimizer"] = _optimizer(s["optimizer"])
    s["augment"] = _bool("augment", s["augment"])
    if s["augment"] and s["dataset"] == "digits":
        raise _bad("augment", "augmentation is for mnist, cifar10, cifar100 and imagenet, not digits")
    s["eval_every"] = _int("eval_every", s["eval_every"], 1)
    s["checkpoint_every"] = _int("checkpoint_every", s["checkpoint_every"], 1, allow_none=True)
    s["stop"] = _stop(s["stop"])
    if s["init_checkpoint"] is not None and not isinstance(s["init_checkpoint"], str):
        raise _bad("init_checkpoint", f"expected a path, got {s['init_checkpoint']!r}")
    s["perturb"] = _float("perturb", s["perturb"], minimum=0.0)
    return s


def _model_args(name, args):
    import inspect

    if args is None:
        return {}
    if not isinstance(args, dict):
        raise _bad("model_args", f"expected a mapping, got {args!r}")
    allowed = inspect.signature(MODELS[name]).parameters
    for k in args:
        if k not in allowed:
            raise _bad(f"model_args.{k}", f"not an argument of model {name!r} (choose {', '.join(allowed)})")
    return dict(args)


def _lr_schedule(value):
    if not isinstance(value, dict) or "kind" not in value:
        raise _bad("lr_schedule", f"expected a mapping with 'kind' ({', '.join(LR_KINDS)}), got {value!r}")
    kind = _choice("lr_schedule.kind", value["kind"], LR_KINDS)
    defaults = {"kind": kind, "warmup_epochs": 0}
    if kind == "step":
        defaults.update(milestones=REQUIRED, gamma=0.1)
    s = _section(value, "lr_schedule", defaults)
    s["warmup_epochs"] = _int("lr_schedule.warmup_epochs", s["warmup_epochs"], 0)
    if kind == "step":
        if not isinstance(s["milestones"], list):
            raise _bad("lr_schedule.milestones", f"expected a list of epochs, got {s['milestones']!r}")
        s["milestones"] = sorted(_int("lr_schedule.milestones", m, 1) for m in s["milestones"])
        s["gamma"] = _float("lr_schedule.gamma", s["gamma"], positive=True)
    return s


def _optimizer(value):
    s = _section(value, "optimizer", OPTIMIZER_DEFAULTS)
    s["delay"] = _delay(s["delay"])
    s["workers"] = _int("optimizer.workers", s["workers"], 1, allow_none=True)
    distribution = isinstance(s["delay"], dict)
    if s["schedule"] is None:
        s["schedule"] = "distribution" if distribution else "round_robin"
    s["schedule"] = _choice("optimizer.schedule", s["schedule"], SCHEDULES)
    if distribution != (s["schedule"] == "distribution"):
        raise _bad("optimizer.schedule", f"schedule {s['schedule']!r} does not fit delay {s['delay']!r}")
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
    return s


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


# ================================================================ building blocks


def build_loss(spec: dict):
    """The mean training loss over a batch: cross-entropy, or mse = mean_i 1/2 ||f(x_i) - onehot(y_i)||^2."""
    kind = spec.get("loss", "cross_entropy")
    if kind == "cross_entropy":
        return F.cross_entropy
    if kind == "mse":

        def mse(outputs, targets):
            onehot = F.one_hot(targets, outputs.shape[1]).to(outputs.dtype)
            return 0.5 * (outputs - onehot).pow(2).sum(dim=1).mean()

        return mse
    raise _bad("loss", f"unknown value {kind!r} (choose {', '.join(LOSSES)})")


def build_optimizer(spec: dict, model: torch.nn.Module) -> DelayedSGD:
    """DelayedSGD from ``spec['optimizer']`` with learning rate ``spec['lr']`` and seed ``spec['seed']``."""
    o = spec["optimizer"]
    delay = delay_probabilities(o["delay"]) if isinstance(o["delay"], dict) else o["delay"]
    try:
        return DelayedSGD(
            model.parameters(), lr=spec["lr"], delay=delay, workers=o["workers"], schedule=o["schedule"],
            momentum=o["momentum"], variant=o["variant"], dampening=o["dampening"],
            weight_decay=o["weight_decay"], seed=spec["seed"],
        )
    except ValueError as exc:
        raise UserError(f"spec key 'optimizer': {exc}") from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise _bad("device", "cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def lr_factor(schedule: dict, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at (0-based) ``epoch`` and global ``step``: linear warm-up over
    warmup_epochs, then gamma^(number of milestones <= epoch) for the step schedule."""
    factor = 1.0
    warmup = schedule["warmup_epochs"] * steps_per_epoch
    if step < warmup:
        factor = (step + 1) / warmup
    if schedule["kind"] == "step":
        factor *= schedule["gamma"] ** sum(1 for m in schedule["milestones"] if epoch >= m)
    return factor


def _flat_norm(tensors) -> float:
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


# ================================================================ checkpoints


def save_checkpoint(path: str, payload: dict) -> None:
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    _atomic_write(path, lambda f: torch.save(payload, f), sync=True)


def load_checkpoint(path: str) -> dict:
    """A checkpoint written by this package, on the CPU; UserError naming the file if it is
    missing, truncated, corrupted or not ours."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for damaged files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"checkpoint {path!r} is truncated or corrupted ({reason[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path!r} is not a delay-stability checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"checkpoint {path!r} has format version {ckpt.get('version')}, expected {CHECKPOINT_VERSION}")
    return ckpt


def model_from_checkpoint(path: str, device=None):
    """(model, spec) from a checkpoint: the network of the run's spec with its weights and
    BatchNorm buffers, in the run's dtype, on ``device`` (default: the spec's device), in train mode."""
    ckpt = load_checkpoint(path)
    spec = ckpt["spec"]
    model = build_model(spec["model"], **spec["model_args"])
    model.to(DTYPES[spec["dtype"]])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise UserError(f"checkpoint {path!r} does not fit model {spec['model']!r}: {exc}") from None
    return model.to(torch.device(device) if device is not None else resolve_device(spec["device"])), spec


def _spec_differences(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _spec_differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


# ================================================================ outputs


def write_metrics(path: str, rows: list[dict]) -> None:
    """metrics.csv: one row per evaluation epoch, columns METRIC_COLUMNS, atomically."""
    write_csv(path, METRIC_COLUMNS, rows)


def read_metrics(path: str) -> list[dict]:
    """metrics.csv back as a list of dicts of floats (ints for epoch and step, None for blanks)."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        parsed = {}
        for k, v in row.items():
            parsed[k] = None if v == "" else (int(v) if k in ("epoch", "step") else float(v))
        out.append(parsed)
    return out


class _Progress:
    """tqdm over epochs on a terminal; otherwise a plain log line at most every 10 seconds."""

    def __init__(self, total: int, initial: int, out_dir: str):
        self.tty = sys.stderr.isatty()
        self.total, self.out_dir, self.last = total, out_dir, 0.0
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="epoch", desc=os.path.basename(out_dir) or "train")

    def update(self, epoch: int, loss: float, row: dict | None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            return
        now = time.time()
        if row is not None and (now - self.last >= 10 or epoch == self.total):
            self.last = now
            print(
                f"[train {self.out_dir}] epoch {epoch}/{self.total} step {row['step']} "
                f"train_loss {row['train_loss']:.6g} val_error {row['val_error']:.4f}",
                file=sys.stderr, flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ================================================================ the run


class Run:
    """One training run: set-up, the epoch loop, evaluation, checkpoints and outputs."""

    def __init__(self, spec: dict, out_dir: str, callbacks=()):
        self.spec = spec
        self.out_dir = out_dir
        self.callbacks = list(callbacks)
        if spec["threads"] is not None:
            torch.set_num_threads(spec["threads"])
        self.device = resolve_device(spec["device"])
        self.dtype = DTYPES[spec["dtype"]]
        self.data = load_dataset(spec, self.device)
        self.batch_size = spec["batch_size"]
        self.steps_per_epoch = self.data.steps_per_epoch(self.batch_size)
        self.full_batch = self.steps_per_epoch == 1
        if spec["dataset"] == "imagenet":
            self.eval_batch = self.batch_size
        else:  # evaluation batches: the whole set for digits full batch, else at least 1000 images
            self.eval_batch = 0 if self.full_batch and spec["dataset"] == "digits" else max(self.batch_size, 1000)
        self.loss_fn = build_loss(spec)

        torch.manual_seed(spec["seed"])
        self.model = build_model(spec["model"], **spec["model_args"]).to(self.device, self.dtype)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(spec, self.model)
        self.generator = torch.Generator().manual_seed(spec["seed"])
        every = spec["checkpoint_every"]
        self.checkpoint_every = every if every is not None else max(1, spec["epochs"] // 20)
        self.loop = {  # everything the epoch loop carries from one epoch to the next
            "epoch": 0, "step": 0, "rows": [], "losses": [], "status": None,
            "initial_train_loss": None, "initial_train_error": None,
            "escaped": False, "epochs_to_escape": None, "diverged": False, "diverged_epoch": None,
            "steady_state_epoch": None, "seconds": 0.0, "staleness_at_row": (0, 0),
            "settled_epoch": None, "settle_run": 0,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "resumed": [],
        }

    # ------------------------------------------------------------ start or resume

    def start(self) -> None:
        resume = self._existing_checkpoint()
        if resume is not None:
            self._restore(resume)
            return
        if self.spec["init_checkpoint"]:
            self._load_init_weights(self.spec["init_checkpoint"])
        if self.spec["perturb"] > 0:
            self._perturb(self.spec["perturb"])
        self.init_params = [p.detach().clone() for p in self.params]
        loss, error = self._initial_train_loss()
        self.loop["initial_train_loss"], self.loop["initial_train_error"] = loss, error
        self.t0 = time.time()
        self.loop["rows"].append(self._row(0, loss, error, lr=self.spec["lr"] * self._lr_factor(0)))

    def _existing_checkpoint(self):
        """The checkpoint to resume from: checkpoint.pt (an interrupted run) or final.pt (a finished
        one) of the same spec. A finished run of another spec is stale and is started afresh (the
        pipeline reruns a step when its options change); an interrupted one of another spec is an error."""
        for name in ("checkpoint.pt", "final.pt"):
            path = os.path.join(self.out_dir, name)
            if os.path.exists(path):
                ckpt = load_checkpoint(path)
                diff = _spec_differences(ckpt.get("spec"), self.spec)
                if diff and name == "final.pt":
                    print(f"[train {self.out_dir}] {path} is a finished run of another spec "
                          f"(differs in: {', '.join(diff[:8])}); starting afresh", file=sys.stderr)
                    return None
                if diff:
                    raise UserError(
                        f"{path!r} was written for a different spec (differs in: {', '.join(diff[:8])}); "
                        "use another --out folder or delete that checkpoint to start afresh"
                    )
                return ckpt
        return None

    def _restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.init_params = [t.to(self.device) for t in ckpt["init_params"]]
        self.loop = ckpt["loop"]
        self.loop["resumed"] = list(self.loop["resumed"]) + [
            {"epoch": self.loop["epoch"], "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        ]
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.generator.set_state(rng["data"])
        self.t0 = time.time()

    def _load_init_weights(self, path: str) -> None:
        ckpt = load_checkpoint(path)
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise UserError(f"init_checkpoint {path!r} does not fit model {self.spec['model']!r}: {exc}") from None

    @torch.no_grad()
    def _perturb(self, norm: float) -> None:
        """Add a Gaussian direction of L2 norm ``norm`` (seeded by the run's seed) to the weights."""
        g = torch.Generator().manual_seed(self.spec["seed"] + 7919)
        noise = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in self.params]
        scale = norm / _flat_norm(noise)
        for p, z in zip(self.params, noise):
            p.add_((z * scale).to(p.device, p.dtype))

    @torch.no_grad()
    def _initial_train_loss(self) -> tuple[float, float]:
        """L0: mean loss over the training set at the starting weights, in the training step's
        mode (BatchNorm with batch statistics, batches of the training batch size), leaving the
        BatchNorm running statistics untouched."""
        buffers = {k: v.clone() for k, v in self.model.named_buffers()}
        self.model.train()
        loss, error = self._mean_loss(self.data.train_batches(self.batch_size, shuffle=False, augment=False))
        for k, v in self.model.named_buffers():
            v.copy_(buffers[k])
        return loss, error

    def _mean_loss(self, batches) -> tuple[float, float]:
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        wrong = torch.zeros((), dtype=torch.int64, device=self.device)
        n = count = 0
        for x, y in batches:
            out = self.model(x)
            loss = self.loss_fn(out, y).double()
            total += loss * len(y)
            wrong += (out.argmax(1) != y).sum()
            n += len(y)
            count += 1
        mean = float(loss) if count == 1 else float(total) / n  # one batch: its loss, exactly
        return mean, int(wrong) / n

    # ------------------------------------------------------------ the loop

    def _lr_factor(self, epoch: int) -> float:
        return lr_factor(self.spec["lr_schedule"], epoch, self.loop["step"], self.steps_per_epoch)

    def _emit(self, event: str, **fields) -> None:
        if not self.callbacks:
            return
        state = SimpleNamespace(
            model=self.model, optimizer=self.optimizer, dataset=self.data, spec=self.spec,
            loss_fn=self.loss_fn, out_dir=self.out_dir, step=self.loop["step"], epoch=self.loop["epoch"], **fields,
        )
        for cb in self.callbacks:
            cb(event, state)

    def train(self) -> None:
        epochs = self.spec["epochs"]
        progress = _Progress(epochs, self.loop["epoch"], self.out_dir)
        self._emit("start", loss=self.loop["initial_train_loss"])
        try:
            while self.loop["status"] is None and self.loop["epoch"] < epochs:
                epoch = self.loop["epoch"] + 1
                loss, error, grad_norm, lr = self._train_epoch(epoch)
                self.loop["epoch"] = epoch
                self.loop["losses"].append(loss)
                self._check_stop(epoch, loss, grad_norm)
                row = None
                if self.loop["status"] is not None or epoch % self.spec["eval_every"] == 0 or epoch == epochs:
                    row = self._row(epoch, loss, error, lr)
                    self.loop["rows"].append(row)
                self._emit("epoch", loss=loss, row=row)
                progress.update(epoch, loss, row)
                if self.loop["status"] is None and epoch % self.checkpoint_every == 0 and epoch < epochs:
                    self.save(os.path.join(self.out_dir, "checkpoint.pt"))
                    write_metrics(os.path.join(self.out_dir, "metrics.csv"), self.loop["rows"])
        finally:
            progress.close()
        if self.loop["status"] is None:
            self.loop["status"] = "completed"
        self._emit("end", loss=self.loop["losses"][-1] if self.loop["losses"] else self.loop["initial_train_loss"])

    def _train_epoch(self, epoch: int):
        """One pass over the training set: (mean train loss, mean train error, last grad norm, lr)."""
        self.model.train()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        wrong = torch.zeros((), dtype=torch.int64, device=self.device)
        n, lr, loss = 0, None, None
        for x, y in self.data.train_batches(self.batch_size, shuffle=True, generator=self.generator):
            lr = self.spec["lr"] * self._lr_factor(epoch - 1)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            out = self.model(x)
            loss = self.loss_fn(out, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.loop["step"] += 1
            total += loss.detach().double() * len(y)
            wrong += (out.detach().argmax(1) != y).sum()
            n += len(y)
            self._emit("step", loss=loss.detach())
            if not self.full_batch and self.loop["step"] % NAN_CHECK_EVERY == 0 and not torch.isfinite(loss):
                break  # diverged: the epoch's mean loss is not finite, _check_stop ends the run
        grad_norm = None
        if self.spec["stop"]["steady_state"] and self.spec["stop"]["steady_state"]["grad_norm_tol"] is not None:
            grad_norm = _flat_norm([p.grad for p in self.params if p.grad is not None])
        if self.full_batch:  # the step's own loss, exactly (no sum-and-divide rounding)
            total = loss.detach().double()
        loss_sum, wrong_sum = torch.stack([total, wrong.double()]).tolist()  # one host sync per epoch
        return (loss_sum if self.full_batch else loss_sum / n), wrong_sum / n, grad_norm, lr

    def _check_stop(self, epoch: int, loss: float, grad_norm) -> None:
        loop, stop = self.loop, self.spec["stop"]
        l0 = loop["initial_train_loss"]
        finite = math.isfinite(loss)
        escape = stop["escape"]
        if escape is not None and not loop["escaped"] and (not finite or loss > escape["factor"] * l0 + escape["delta"]):
            loop["escaped"], loop["epochs_to_escape"] = True, epoch
        if not finite or loss > stop["divergence"]["loss_factor"] * l0:
            loop["diverged"], loop["diverged_epoch"], loop["status"] = True, epoch, "diverged"
            return
        if escape is not None and loop["escaped"] and escape["stop"]:
            loop["status"] = "escaped"
            return
        settle = stop["settle"]
        if settle is not None:  # settled: the loss stayed below a level for `window` epochs in a row
            loop["settle_run"] = loop["settle_run"] + 1 if loss < settle["below"] else 0
            if loop["settle_run"] >= settle["window"]:
                loop["settled_epoch"], loop["status"] = epoch, "settled"
                return
        steady = stop["steady_state"]
        if steady is not None and len(loop["losses"]) >= steady["window"]:
            window = loop["losses"][-steady["window"] :]
            mean = sum(window) / len(window)
            flat = max(window) - min(window) <= steady["rel_tol"] * abs(mean)
            small = steady["grad_norm_tol"] is None or (grad_norm is not None and grad_norm <= steady["grad_norm_tol"])
            if flat and small:
                loop["steady_state_epoch"], loop["status"] = epoch, "steady"

    @torch.no_grad()
    def _row(self, epoch: int, train_loss: float, train_error, lr: float) -> dict:
        """A metrics row: validation pass (eval mode), weight norm, distance from the start, staleness."""
        was_training = self.model.training
        self.model.eval()
        val_loss, val_error = self._mean_loss(self.data.val_batches(self.eval_batch))
        self.model.train(was_training)
        counts = self.optimizer.staleness_histogram()
        total = int(sum(k * c for k, c in enumerate(counts.tolist())))
        count = int(counts.sum())
        prev_total, prev_count = self.loop["staleness_at_row"]
        self.loop["staleness_at_row"] = (total, count)
        landed = count - prev_count
        return {
            "epoch": epoch,
            "step": self.loop["step"],
            "lr": lr,
            "train_loss": train_loss,
            "train_error": train_error,
            "val_loss": val_loss,
            "val_error": val_error,
            "weight_norm": _flat_norm(self.params),
            "dist_from_init": _flat_norm([p - p0 for p, p0 in zip(self.params, self.init_params)]),
            "mean_staleness": (total - prev_total) / landed if landed else None,
            "seconds": round(self.loop["seconds"] + time.time() - self.t0, 3),
        }

    # ------------------------------------------------------------ outputs

    def save(self, path: str) -> None:
        now = time.time()
        self.loop["seconds"] += now - self.t0
        self.t0 = now
        save_checkpoint(path, {
            "spec": self.spec,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "init_params": self.init_params,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
                "data": self.generator.get_state(),
            },
            "loop": self.loop,
            "epoch": self.loop["epoch"],
            "step": self.loop["step"],
            "metrics": self.loop["rows"],
            "package_version": __version__,
        })

    def finish(self) -> dict:
        out = self.out_dir
        self.save(os.path.join(out, "final.pt"))
        write_metrics(os.path.join(out, "metrics.csv"), self.loop["rows"])
        summary = self.summary()
        write_json(os.path.join(out, "summary.json"), summary)
        write_json(os.path.join(out, "run.json"), self.provenance())
        rolling = os.path.join(out, "checkpoint.pt")
        if os.path.exists(rolling):
            os.remove(rolling)  # final.pt holds the same state; keep one copy of the in-flight buffers
        return summary

    def summary(self) -> dict:
        loop = self.loop
        final = loop["rows"][-1]
        return {
            "status": loop["status"],
            "epochs_run": loop["epoch"],
            "steps": loop["step"],
            "final": {c: final[c] for c in METRIC_COLUMNS},
            "diverged": loop["diverged"],
            "diverged_epoch": loop["diverged_epoch"],
            "escaped": loop["escaped"],
            "epochs_to_escape": loop["epochs_to_escape"],
            "initial_train_loss": loop["initial_train_loss"],
            "initial_train_error": loop["initial_train_error"],
            "steady_state_epoch": loop["steady_state_epoch"],
            "settled_epoch": loop["settled_epoch"],
            "mean_staleness": self.optimizer.mean_staleness(),
            "optimizer_buffer_bytes": self.optimizer.buffer_bytes(),
            "seconds": round(loop["seconds"], 3),
        }

    def provenance(self) -> dict:
        return {
            "spec": self.spec,
            "seed": self.spec["seed"],
            "package": "delay-stability",
            "package_version": __version__,
            "torch_version": torch.__version__,
            "python_version": sys.version.split()[0],
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(),
            "hostname": socket.gethostname(),
            "start_time": self.loop["started"],
            "end_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "resumed": self.loop["resumed"],
        }


def run_training(spec: dict, out_dir: str, callbacks=()) -> dict:
    """Train as ``spec`` says, writing metrics.csv, summary.json, run.json and final.pt into
    ``out_dir`` (resuming from a checkpoint of the same spec found there); returns the summary.

    ``callbacks`` are called as ``cb(event, state)`` with event "start", "step" (after every
    optimizer step; ``state.loss`` is the step's detached loss tensor), "epoch" (``state.loss`` the
    epoch's train loss, ``state.row`` its metrics row or None) and "end"; ``state`` also carries
    model, optimizer, dataset, spec, loss_fn, out_dir, step and epoch.
    """
    spec = validate_spec(spec)
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(out_dir):  # temporary files of a killed write
        if name.startswith(".tmp-"):
            os.remove(os.path.join(out_dir, name))
    run = Run(spec, out_dir, callbacks)
    run.start()
    run.train()
    return run.finish()


# ================================================================ command line


def read_spec(path: str) -> dict:
    """A spec from a YAML or JSON file (UserError naming the file if missing or malformed)."""
    import yaml

    if not os.path.isfile(path):
        raise UserError(f"--spec: no such file: {path}")
    try:
        with open(path) as f:
            spec = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"--spec: cannot parse {path}: {str(exc).splitlines()[0]}") from None
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


def _cli_train(args) -> int:
    spec = apply_overrides(read_spec(args.spec), args.set)
    summary = run_training(spec, args.out, callbacks=())
    final = summary["final"]
    print(
        f"{args.out}: {summary['status']} after {summary['epochs_run']} epochs ({summary['steps']} steps); "
        f"train_loss {final['train_loss']:.6g}, val_error {final['val_error']:.4f}"
    )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model with delayed SGD from a spec file",
        description="Train a model with DelayedSGD as the spec (YAML or JSON) says; resumes from a "
        "checkpoint of the same spec in --out.",
    )
    p.add_argument("--spec", required=True, metavar="FILE", help="training spec, .yaml or .json")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a spec key, e.g. --set optimizer.delay=8 --set lr=0.05 (repeatable)",
    )
    p.set_defaults(func=_cli_train)
