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

import math
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from . import __version__
from .asgd import DelayedSGD, without_in_flight
from .data import DTYPES, load_dataset
from .errors import TimeLimitReached, UserError
from .files import atomic_write as _atomic_write
from .files import write_csv, write_json
from .models import build_model
from .spec import LOSSES, apply_overrides, delay_probabilities, read_spec, spec_differences, validate_spec

#: Columns of metrics.csv, in order (the one place they are named).
METRIC_COLUMNS = (
    "epoch", "step", "lr", "train_loss", "train_error", "val_loss", "val_error",
    "weight_norm", "dist_from_init", "mean_staleness", "seconds",
)
CHECKPOINT_FORMAT = "delay-stability-checkpoint"
CHECKPOINT_VERSION = 1
NAN_CHECK_EVERY = 50  # minibatch training: look for a NaN loss every this many steps


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
    raise UserError(f"spec key 'loss': unknown value {kind!r} (choose {', '.join(LOSSES)})")


def build_optimizer(spec: dict, model: torch.nn.Module) -> DelayedSGD:
    """DelayedSGD from ``spec['optimizer']`` with learning rate ``spec['lr']`` and seed ``spec['seed']``.

    ``weight_decay_on: weights`` decays only the weights of convolutions and linear layers (two
    parameter groups; biases and BatchNorm scales and shifts get no decay), as the authors' ResNets."""
    o = spec["optimizer"]
    delay = delay_probabilities(o["delay"]) if isinstance(o["delay"], dict) else o["delay"]
    schedule_args = {}
    if o.get("spread") is not None:
        schedule_args["spread"] = o["spread"]
    if o.get("compute_time") is not None:
        schedule_args["compute_time"] = o["compute_time"]
    if o.get("landing_log") is not None:
        from .staleness import landing_order

        schedule_args["landing_order"] = landing_order(o["landing_log"])
    try:
        return DelayedSGD(
            decay_groups(model, o["weight_decay"], o.get("weight_decay_on", "all")), lr=spec["lr"], delay=delay,
            workers=o["workers"], schedule=o["schedule"], momentum=o["momentum"], variant=o["variant"],
            dampening=o["dampening"], weight_decay=o["weight_decay"], seed=spec["seed"],
            velocity=o.get("velocity", "gradient"), velocity_start=o.get("velocity_start", "zero"),
            **schedule_args, **_mitigation_kwargs(o),
        )
    except ValueError as exc:
        raise UserError(f"spec key 'optimizer': {exc}") from None


def decay_groups(model: torch.nn.Module, weight_decay: float, on: str = "all"):
    """The parameters, or (``on="weights"``) two groups: the weights of Conv/Linear layers with
    ``weight_decay`` and every other parameter (biases, normalisation) with none."""
    if on == "all" or weight_decay == 0:
        return model.parameters()
    conv_linear = (torch.nn.modules.conv._ConvNd, torch.nn.Linear)
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, conv_linear) and m.weight is not None}
    params = list(model.parameters())
    groups = [{"params": [p for p in params if id(p) in decayed]},
              {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _mitigation_kwargs(optimizer: dict) -> dict:
    """DelayedSGD's mitigation arguments from ``optimizer.mitigation`` (none when the spec has none)."""
    m = optimizer.get("mitigation")
    if not m:
        return {}
    return {"mitigation": m["name"], "mitigation_args": {k: v for k, v in m.items() if k != "name"}}


def resolve_device(name) -> torch.device:
    """The torch device a spec or flag names: ``auto`` (or None) = cuda if available, else cpu."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("spec key 'device': cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def lr_factor(schedule: dict, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at (0-based) ``epoch`` and global ``step``: linear warm-up over
    warmup_epochs from ``warmup_start`` (0 by default; Goyal et al.'s warm-up from the unscaled eta to
    the scaled one k eta starts at 1/k, and there is no ramp when k = 1), then gamma^(number of
    milestones <= epoch) for the step schedule."""
    factor = 1.0
    warmup = schedule["warmup_epochs"] * steps_per_epoch
    if step < warmup:
        start = schedule.get("warmup_start", 0.0)
        factor = start + (1.0 - start) * (step + 1) / warmup if start else (step + 1) / warmup
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
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():  # torch's advice about pickle protocols is not for our users
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a pickle of objects (torch would advise weights_only=False: never)
        raise UserError(f"{path!r} is not a delay-stability checkpoint (it holds Python objects other than "
                        "tensors and plain data, which this package never writes nor loads)") from None
    except Exception as exc:  # torch raises many kinds for damaged files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"checkpoint {path!r} is truncated or corrupted ({reason[:120]}); if it is a result "
                        "of the pipeline, `delay-stability audit` names the command that rebuilds it") from None
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


# ================================================================ a job's time limit

#: Seconds of training a job may do (set by the workflow to 90% of the config's max_job_minutes,
#: the rest left for start-up and the last epoch): a longer run saves a checkpoint at the end of the
#: epoch past it and stops (TimeLimitReached, exit status 75); Snakemake's retries then run the
#: next job of the chain, which resumes from the checkpoint. Every job makes at least one epoch.
JOB_SECONDS_ENV = "DELAY_STABILITY_JOB_SECONDS"
_TRAINING_START = [None]  # when this process began to train (monotonic seconds)


def past_job_time_limit() -> bool:
    """Whether this process has trained longer than ``$DELAY_STABILITY_JOB_SECONDS`` (unset: never)."""
    limit = os.environ.get(JOB_SECONDS_ENV)
    if not limit or _TRAINING_START[0] is None:
        return False
    try:
        seconds = float(limit)
    except ValueError:
        raise UserError(f"${JOB_SECONDS_ENV}: expected seconds, got {limit!r}") from None
    return time.monotonic() - _TRAINING_START[0] > seconds


# ================================================================ a finished run, for analysis


@dataclass
class LoadedRun:
    """A run rebuilt from a checkpoint for analysis (sharpness, polish, kick): the network with its
    weights in the run's dtype (train mode), the run's validated spec, loss and dataset."""

    model: torch.nn.Module
    spec: dict
    loss_fn: object
    dataset: object
    device: torch.device

    def batches(self, batch_size=None, *, subset=0, seed=0):
        """The training set in batches of ``batch_size`` (None: the run's own training batch size;
        0: one full batch), optionally a seeded subset of ``subset`` samples (0 = all)."""
        return training_batches(self.dataset, self.spec["batch_size"] if batch_size is None else batch_size,
                                subset=subset, seed=seed)


def load_run(checkpoint: str, device=None) -> LoadedRun:
    """The one way to load a run for analysis: model, spec, loss and data from ``checkpoint``
    (``device``: a torch device or name; None or "auto" = cuda if available)."""
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    model, spec = model_from_checkpoint(checkpoint, device)
    return LoadedRun(model, spec, build_loss(spec), load_dataset(spec, device), device)


def training_batches(dataset, batch_size: int, *, subset: int = 0, seed: int = 0) -> list:
    """The whole training set (held in memory) as a list of (inputs, targets) batches of
    ``batch_size`` (0 = one full batch), in order; ``subset`` > 0 draws that many samples without
    replacement first (seeded by ``seed``)."""
    if not hasattr(dataset, "train_x"):
        raise UserError(f"dataset {dataset.name!r} is streamed from disk; this needs a training set held "
                        "in memory (digits, mnist, cifar10, cifar100)")
    x, y = dataset.train_x, dataset.train_y
    if subset:
        if subset > len(x):
            raise UserError(f"--subset {subset} exceeds the {len(x)} training samples")
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:subset].to(x.device)
        x, y = x[pick], y[pick]
    size = batch_size if batch_size > 0 else len(x)
    return list(zip(torch.split(x, size), torch.split(y, size)))


@torch.no_grad()
def mean_loss(model, loss_fn, batches) -> float:
    """L(w) = Σ_b (n_b/N) L_b(w), the mean training loss over all samples, in float64, in the
    model's current mode (no gradient)."""
    total, n = 0.0, 0
    for x, y in batches:
        total += float(loss_fn(model(x), y).double()) * len(x)
        n += len(x)
    return total / n


def mean_loss_and_grad(model, loss_fn, batches, params):
    """L(w) = Σ_b (n_b/N) L_b(w), the mean training loss over all batches, and its gradient with
    respect to ``params`` (a list of tensors shaped like them)."""
    n = sum(len(y) for _, y in batches)
    total = 0.0
    grads = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        loss = loss_fn(model(x), y) * (len(y) / n)
        for g, gi in zip(grads, torch.autograd.grad(loss, params)):
            g += gi
        total += float(loss.detach())
    return total, grads


# ================================================================ outputs


def write_metrics(path: str, rows: list[dict]) -> None:
    """metrics.csv: one row per evaluation epoch, columns METRIC_COLUMNS, atomically."""
    write_csv(path, METRIC_COLUMNS, rows)


def read_metrics(path: str) -> list[dict]:
    """metrics.csv back as a list of dicts of floats (ints for epoch and step, None for blanks)."""
    from .files import read_csv

    out = []
    for row in read_csv(path, "metrics"):
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


@dataclass
class TrainingSetup:
    """What a run's loop needs besides its model and optimizer (``training_setup``); an ensemble's
    members share one."""

    device: torch.device
    dtype: torch.dtype
    data: object
    batch_size: int
    steps_per_epoch: int
    full_batch: bool  # one step per epoch: the stored training set, no shuffling
    eval_batch: int
    checkpoint_every: int


def training_setup(spec: dict) -> TrainingSetup:
    """Threads, device, dtype, dataset and the loop's batch sizes and intervals for a validated spec."""
    if spec["threads"] is not None:
        torch.set_num_threads(spec["threads"])
    device = resolve_device(spec["device"])
    data = load_dataset(spec, device)
    steps = data.steps_per_epoch(spec["batch_size"])
    return TrainingSetup(device, DTYPES[spec["dtype"]], data, spec["batch_size"], steps, steps == 1,
                         eval_batch_size(spec, steps == 1), checkpoint_interval(spec))



class Run:
    """One training run: set-up, the epoch loop, evaluation, checkpoints and outputs."""

    def __init__(self, spec: dict, out_dir: str, callbacks=()):
        self.spec = spec
        self.out_dir = out_dir
        self.callbacks = list(callbacks)
        self.final_in_flight = False  # final.pt without the in-flight buffers (run_training's final_in_flight)
        setup = training_setup(spec)
        self.device, self.dtype, self.data = setup.device, setup.dtype, setup.data
        self.batch_size, self.steps_per_epoch, self.full_batch = setup.batch_size, setup.steps_per_epoch, setup.full_batch
        self.eval_batch, self.checkpoint_every = setup.eval_batch, setup.checkpoint_every
        self.loss_fn = build_loss(spec)

        torch.manual_seed(spec["seed"])
        self.model = build_model(spec["model"], **spec["model_args"]).to(self.device, self.dtype)
        self.perf = performance_settings(spec, self.device)
        if self.perf["channels_last"]:
            self.model.to(memory_format=torch.channels_last)
            self.data.channels_last = True
        self.forward = torch.compile(self.model) if self.perf["compile"] else self.model
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(spec, self.model)
        self.generator = torch.Generator().manual_seed(spec["seed"])
        self.loop = LoopState()

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
        self.loop.initial_train_loss, self.loop.initial_train_error = loss, error
        self.t0 = time.time()
        self.loop.rows.append(self._row(0, loss, error, lr=self._lr(0)))

    def _existing_checkpoint(self):
        """The checkpoint to resume from: checkpoint.pt (an interrupted run) or final.pt (a finished
        one) of the same spec. A finished run of another spec is stale and is started afresh (the
        pipeline reruns a step when its options change); an interrupted one of another spec is an error."""
        for name in ("checkpoint.pt", "final.pt"):
            path = os.path.join(self.out_dir, name)
            if os.path.exists(path):
                ckpt = load_checkpoint(path)
                diff = spec_differences(ckpt.get("spec"), self.spec)
                if diff and name == "final.pt":
                    print(f"[train {self.out_dir}] {path} is a finished run of another spec "
                          f"(differs in: {', '.join(diff[:8])}); starting afresh", file=sys.stderr)
                    return None
                if diff:
                    raise UserError(
                        f"{path!r} was written for a different spec (differs in: {', '.join(diff[:8])}); "
                        "use another --out folder or delete that checkpoint to start afresh"
                    )
                version = ckpt.get("package_version")
                if version != __version__ and name == "final.pt":
                    print(f"[train {self.out_dir}] {path} was written by delay-stability {version} (this is "
                          f"{__version__}); starting afresh", file=sys.stderr)
                    return None
                if version != __version__:
                    raise UserError(
                        f"{path!r} was written by delay-stability {version} (this is {__version__}): resume it "
                        "with that version, or delete that checkpoint to start afresh")
                return ckpt
        return None

    def _restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as exc:  # e.g. velocities of another convention: never load them silently
            raise UserError(f"{self.out_dir}: its checkpoint does not fit this spec's optimizer ({exc})") from None
        if ckpt.get("init_params") is not None:  # a finished run's final.pt keeps none (it takes no more steps)
            self.init_params = [t.to(self.device) for t in ckpt["init_params"]]
        else:
            self.init_params = [p.detach().clone() for p in self.params]
        self.loop = LoopState.from_dict(ckpt["loop"])
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.generator.set_state(rng["data"])
        for cb, state in zip(self.callbacks, ckpt.get("callbacks") or []):
            if state is not None and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(state)
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
            out = self._logits(x)
            loss = self.loss_fn(out, y).double()
            total += loss * len(y)
            wrong += (out.argmax(1) != y).sum()
            n += len(y)
            count += 1
        mean = float(loss) if count == 1 else float(total) / n  # one batch: its loss, exactly
        return mean, int(wrong) / n

    # ------------------------------------------------------------ the loop

    def _logits(self, x):
        """The forward pass: the model itself, or (performance settings, CUDA) on NHWC inputs, its
        compiled form, under bf16 autocast, the logits returned in float32 (the loss and every weight, gradient and
        optimizer buffer stay float32: bf16 is the arithmetic of matmuls and convolutions only)."""
        if self.perf["channels_last"] and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # a no-op for the ImageFolder's batches
        if not self.perf["bf16"]:
            return self.forward(x)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            out = self.forward(x)
        return out.float()

    def _lr(self, epoch: int) -> float:
        """The learning rate of the next step, in (0-based) ``epoch``."""
        return get_lr(self.spec, epoch, self.loop.step, self.steps_per_epoch)

    def _emit(self, event: str, **fields) -> None:
        if not self.callbacks:
            return
        state = SimpleNamespace(
            model=self.model, optimizer=self.optimizer, dataset=self.data, spec=self.spec,
            loss_fn=self.loss_fn, out_dir=self.out_dir, step=self.loop.step, epoch=self.loop.epoch, **fields,
        )
        for cb in self.callbacks:
            cb(event, state)

    def train(self) -> None:
        epochs = self.spec["epochs"]
        if _TRAINING_START[0] is None:
            _TRAINING_START[0] = time.monotonic()
        loop = self.loop
        progress = _Progress(epochs, loop.epoch, self.out_dir)
        self._emit("start", loss=loop.initial_train_loss)
        try:
            while loop.status is None and loop.epoch < epochs:
                epoch = loop.epoch + 1
                # ---- train one epoch (forward, backward, DelayedSGD step, per minibatch)
                loss, error, grad_norm, lr = self._train_epoch(epoch)
                # ---- stop rules (check_stop, shared with the ensemble)
                end_epoch(loop, self.spec["stop"], epoch, loss, grad_norm)
                # ---- evaluate: a metrics row on eval epochs, the last epoch and the epoch the run stops
                row = None
                if loop.status is not None or epoch % self.spec["eval_every"] == 0 or epoch == epochs:
                    row = self._row(epoch, loss, error, lr)
                    loop.rows.append(row)
                self._emit("epoch", loss=loss, row=row)
                progress.update(epoch, loss, row)
                # ---- checkpoint: every checkpoint_every epochs, and at the job's time limit
                if loop.status is None and epoch % self.checkpoint_every == 0 and epoch < epochs:
                    self.save(os.path.join(self.out_dir, "checkpoint.pt"))
                    write_metrics(os.path.join(self.out_dir, "metrics.csv"), loop.rows)
                if loop.status is None and epoch < epochs and past_job_time_limit():
                    self.save(os.path.join(self.out_dir, "checkpoint.pt"))
                    write_metrics(os.path.join(self.out_dir, "metrics.csv"), loop.rows)
                    raise TimeLimitReached(
                        f"{self.out_dir}: stopped at the job's time limit after epoch {epoch} of {epochs}; "
                        "checkpoint saved, the next attempt resumes from it")
        finally:
            progress.close()
        if loop.status is None:
            loop.status = "completed"
        self._emit("end", loss=loop.losses[-1] if loop.losses else loop.initial_train_loss)

    def _train_epoch(self, epoch: int):
        """One pass over the training set: (mean train loss, mean train error, last grad norm, lr)."""
        self.model.train()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        wrong = torch.zeros((), dtype=torch.int64, device=self.device)
        n, lr, loss = 0, None, None
        for x, y in self.data.train_batches(self.batch_size, shuffle=True, generator=self.generator):
            lr = self._lr(epoch - 1)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            out = self._logits(x)
            loss = self.loss_fn(out, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.loop.step += 1
            total += loss.detach().double() * len(y)
            wrong += (out.detach().argmax(1) != y).sum()
            n += len(y)
            self._emit("step", loss=loss.detach())
            if not self.full_batch and self.loop.step % NAN_CHECK_EVERY == 0 and not torch.isfinite(loss):
                break  # diverged: the epoch's mean loss is not finite, check_stop ends the run
        grad_norm = None
        if needs_grad_norm(self.spec["stop"]):
            grad_norm = _flat_norm([p.grad for p in self.params if p.grad is not None])
        if self.full_batch:  # the step's own loss, exactly (no sum-and-divide rounding)
            total = loss.detach().double()
        loss_sum, wrong_sum = torch.stack([total, wrong.double()]).tolist()  # one host sync per epoch
        return (loss_sum if self.full_batch else loss_sum / n), wrong_sum / n, grad_norm, lr

    @torch.no_grad()
    def _row(self, epoch: int, train_loss: float, train_error, lr: float) -> dict:
        """A metrics row: validation pass (eval mode), weight norm, distance from the start, staleness."""
        was_training = self.model.training
        self.model.eval()
        val = self._mean_loss(self.data.val_batches(self.eval_batch))
        self.model.train(was_training)
        counts = self.optimizer.staleness_histogram()
        staleness = (int(sum(k * c for k, c in enumerate(counts.tolist()))), int(counts.sum()))
        return metrics_row(
            self.loop, epoch, lr, (train_loss, train_error), val, _flat_norm(self.params),
            _flat_norm([p - p0 for p, p0 in zip(self.params, self.init_params)]), staleness,
            self.loop.seconds + time.time() - self.t0)

    # ------------------------------------------------------------ outputs

    def save(self, path: str, in_flight: bool = True) -> None:
        """The run's state into ``path``; ``in_flight=False`` leaves out the optimizer's in-flight
        buffers (``asgd.without_in_flight``) and the starting weights (the seed's, or init_checkpoint's
        perturbed by the seed): what final.pt keeps unless asked otherwise."""
        now = time.time()
        self.loop.seconds += now - self.t0
        self.t0 = now
        save_checkpoint(path, {
            "spec": self.spec,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if in_flight else without_in_flight(self.optimizer.state_dict()),
            "init_params": self.init_params if in_flight else None,  # the seed's (or init_checkpoint's)
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
                "data": self.generator.get_state(),
            },
            "loop": self.loop.to_dict(),
            "epoch": self.loop.epoch,
            "step": self.loop.step,
            "metrics": self.loop.rows,
            "package_version": __version__,
            # callbacks that carry state across steps (the sharpness tracker's warm start) keep it here
            "callbacks": [cb.state_dict() if hasattr(cb, "state_dict") else None for cb in self.callbacks],
        })

    def finish(self) -> dict:
        out = self.out_dir
        self.save(os.path.join(out, "final.pt"), in_flight=self.final_in_flight)
        write_metrics(os.path.join(out, "metrics.csv"), self.loop.rows)
        summary = self.summary()
        write_json(os.path.join(out, "summary.json"), summary)
        write_json(os.path.join(out, "run.json"), self.provenance())
        rolling = os.path.join(out, "checkpoint.pt")
        if os.path.exists(rolling):
            os.remove(rolling)  # final.pt holds the same state; keep one copy of the in-flight buffers
        return summary

    def summary(self) -> dict:
        return summary_record(self.loop, self.optimizer.mean_staleness(), self.optimizer.buffer_bytes(),
                              self.optimizer.staleness_histogram().tolist())

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
            "performance": performance_settings(self.spec, self.device),
            "hostname": socket.gethostname(),
            "start_time": self.loop.started,
            "end_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "resumed": self.loop.resumed,
        }


def performance_settings(spec: dict, device: torch.device) -> dict:
    """The spec's ``performance`` flags that apply on ``device``: channels_last (NHWC convolutions),
    bf16 (autocast of the forward pass to bfloat16; fp32 master weights, gradients, optimizer state
    and loss) and compile (``torch.compile`` of the model), on CUDA only; all off on the CPU, where
    a run is then exactly the run without them."""
    cuda = device.type == "cuda"
    return {k: bool(v) and cuda for k, v in spec["performance"].items()}


def eval_batch_size(spec: dict, full_batch: bool) -> int:
    """Evaluation batches: the whole set for digits trained full batch (0), the training batch for
    imagenet, else at least 1000 images."""
    if spec["dataset"] == "imagenet":
        return spec["batch_size"]
    return 0 if full_batch and spec["dataset"] == "digits" else max(spec["batch_size"], 1000)


def checkpoint_interval(spec: dict) -> int:
    """Epochs between rolling checkpoints: checkpoint_every, or about every 5% of the epochs."""
    every = spec["checkpoint_every"]
    return every if every is not None else max(1, spec["epochs"] // 20)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class LoopState:
    """Everything the epoch loop carries from one epoch to the next, for one run (``Run.loop``) or
    one ensemble member (``Member.loop``): a checkpoint holds it as a dict (``to_dict``), so that
    checkpoints load with ``weights_only=True``."""

    epoch: int = 0
    step: int = 0
    rows: list = field(default_factory=list)  # metrics rows so far (row 0 = starting weights)
    losses: list = field(default_factory=list)  # train loss of every epoch so far
    status: str | None = None  # None while training; then completed | diverged | escaped | settled | steady
    initial_train_loss: float | None = None  # L0
    initial_train_error: float | None = None
    escaped: bool = False
    epochs_to_escape: int | None = None
    diverged: bool = False
    diverged_epoch: int | None = None
    steady_state_epoch: int | None = None
    seconds: float = 0.0  # training time of the finished parts (a resumed run adds its own)
    staleness_at_row: tuple = (0, 0)  # (sum of staleness, updates landed) at the last row
    settled_epoch: int | None = None
    settle_run: int = 0  # epochs in a row with train loss below settle.below
    started: str = field(default_factory=_now)
    resumed: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LoopState":
        """The state a checkpoint's ``loop`` holds, marked as resumed now."""
        state = cls(**{f.name: d[f.name] for f in fields(cls)})
        state.staleness_at_row = tuple(state.staleness_at_row)
        state.resumed = list(state.resumed) + [{"epoch": state.epoch, "at": _now()}]
        return state


def get_lr(spec: dict, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The learning rate of global ``step`` in (0-based) ``epoch``: lr * lr_factor (pure)."""
    return spec["lr"] * lr_factor(spec["lr_schedule"], epoch, step, steps_per_epoch)


def check_stop(state: LoopState, stop: dict, loss: float, grad_norm) -> str | None:
    """The status that ends the run after an epoch of train loss ``loss`` (already the last of
    ``state.losses``, with ``state.escaped`` and ``state.settle_run`` counted by ``end_epoch``), or
    None to go on. Pure. The rules, first match wins (L0 = state.initial_train_loss):

        diverged   L is NaN/inf, or L > divergence.loss_factor * L0
        escaped    the run has escaped (L > escape.factor * L0 + escape.delta at some epoch) and escape.stop
        settled    L < settle.below for settle.window epochs in a row
        steady     over the last steady_state.window losses, max - min <= rel_tol * |mean|, and
                   ``grad_norm`` (of the epoch's last step) <= grad_norm_tol when that is given
    """
    if not math.isfinite(loss) or loss > stop["divergence"]["loss_factor"] * state.initial_train_loss:
        return "diverged"
    escape = stop["escape"]
    if escape is not None and state.escaped and escape["stop"]:
        return "escaped"
    settle = stop["settle"]
    if settle is not None and state.settle_run >= settle["window"]:
        return "settled"
    steady = stop["steady_state"]
    if steady is not None and len(state.losses) >= steady["window"]:
        window = state.losses[-steady["window"]:]
        mean = sum(window) / len(window)
        flat = max(window) - min(window) <= steady["rel_tol"] * abs(mean)
        tol = steady["grad_norm_tol"]
        if flat and (tol is None or (grad_norm is not None and grad_norm <= tol)):
            return "steady"
    return None


def needs_grad_norm(stop: dict) -> bool:
    """Whether ``check_stop`` reads the last step's gradient norm (a steady state with grad_norm_tol)."""
    return stop["steady_state"] is not None and stop["steady_state"]["grad_norm_tol"] is not None


def end_epoch(state: LoopState, stop: dict, epoch: int, loss: float, grad_norm) -> str | None:
    """Record epoch ``epoch`` (train loss ``loss``) in ``state``: the loss, the escape and the
    settle counts, and the status ``check_stop`` gives with the epoch it happened at; returns it."""
    state.epoch = epoch
    state.losses.append(loss)
    finite = math.isfinite(loss)
    escape = stop["escape"]
    if escape is not None and not state.escaped and (
            not finite or loss > escape["factor"] * state.initial_train_loss + escape["delta"]):
        state.escaped, state.epochs_to_escape = True, epoch
    if stop["settle"] is not None:
        state.settle_run = state.settle_run + 1 if loss < stop["settle"]["below"] else 0
    status = check_stop(state, stop, loss, grad_norm)
    if status == "diverged":
        state.diverged, state.diverged_epoch = True, epoch
    elif status == "settled":
        state.settled_epoch = epoch
    elif status == "steady":
        state.steady_state_epoch = epoch
    state.status = status
    return status


def metrics_row(state: LoopState, epoch: int, lr: float, train: tuple, val: tuple, weight_norm: float,
                dist_from_init: float, staleness: tuple, seconds: float) -> dict:
    """The metrics row (METRIC_COLUMNS) of ``epoch``: ``train`` and ``val`` = (loss, error),
    ``staleness`` = (sum of staleness, updates landed) so far; mean_staleness is over the updates
    landed since the previous row (state.staleness_at_row, which this advances)."""
    total, count = staleness
    prev_total, prev_count = state.staleness_at_row
    state.staleness_at_row = (total, count)
    landed = count - prev_count
    return {
        "epoch": epoch, "step": state.step, "lr": lr, "train_loss": train[0], "train_error": train[1],
        "val_loss": val[0], "val_error": val[1], "weight_norm": weight_norm, "dist_from_init": dist_from_init,
        "mean_staleness": (total - prev_total) / landed if landed else None, "seconds": round(seconds, 3),
    }


def summary_record(loop: LoopState, mean_staleness, buffer_bytes: int, staleness_histogram=None) -> dict:
    """summary.json of a run from its loop state (``Run.loop``, ``Member.loop``), the optimizer's mean
    staleness, in-flight buffer size and realised staleness histogram (counts, index = staleness): the
    one place its keys are named."""
    final = loop.rows[-1]
    return {
        "status": loop.status,
        "epochs_run": loop.epoch,
        "steps": loop.step,
        "final": {c: final[c] for c in METRIC_COLUMNS},
        "diverged": loop.diverged,
        "diverged_epoch": loop.diverged_epoch,
        "escaped": loop.escaped,
        "epochs_to_escape": loop.epochs_to_escape,
        "initial_train_loss": loop.initial_train_loss,
        "initial_train_error": loop.initial_train_error,
        "steady_state_epoch": loop.steady_state_epoch,
        "settled_epoch": loop.settled_epoch,
        "mean_staleness": mean_staleness,
        "staleness_histogram": [int(c) for c in (staleness_histogram if staleness_histogram is not None else [])],
        "optimizer_buffer_bytes": buffer_bytes,
        "seconds": round(loop.seconds, 3),
    }


def run_training(spec: dict, out_dir: str, callbacks=(), *, code=("delay_stability.train",), key_extra=None,
                 final_in_flight: bool = False) -> dict:
    """Train as ``spec`` says, writing metrics.csv, summary.json, run.json and final.pt into
    ``out_dir`` (resuming from a checkpoint of the same spec found there); returns the summary.

    final.pt holds the weights, the metrics, the RNG and the optimizer's schedule position and
    staleness counts; its in-flight gradients and velocities (tau + 1 and up to M copies of the
    weights, ``asgd.without_in_flight``) and the starting weights (``init_params``: the seed's) are
    left out unless ``final_in_flight``: a finished run is analysed, not stepped on. The rolling checkpoint.pt of a run in progress
    always holds them, so that a resumed run continues bit for bit.

    ``callbacks`` are called as ``cb(event, state)`` with event "start", "step" (after every
    optimizer step; ``state.loss`` is the step's detached loss tensor), "epoch" (``state.loss`` the
    epoch's train loss, ``state.row`` its metrics row or None) and "end"; ``state`` also carries
    model, optimizer, dataset, spec, loss_fn, out_dir, step and epoch. A callback with
    ``state_dict()``/``load_state_dict(d)`` has its state saved in every checkpoint and restored on
    resume (before its "start"), so that a resumed run's callbacks continue bit for bit.

    A finished run is also kept in ``out_dir/.finished/<key>/`` (copies with their SHA-256), the
    key being the spec, ``key_extra`` (a caller's settings that shape its files) and the code
    that computes it (``code``: modules, hashed with everything they import). When the outputs
    are gone (Snakemake deletes a job's outputs before it runs it again, and after it fails) and
    the same key is asked for, they are restored from there instead of trained again; a run of
    another key keeps the previous finished run until it is finished itself (``finished_runs``).
    """
    spec = validate_spec(spec)
    prepare_folder(out_dir, spec)
    key = run_key(spec, code, key_extra)
    restored = restore_finished(out_dir, key)
    if restored is not None:
        return restored
    run = Run(spec, out_dir, callbacks)
    run.final_in_flight = final_in_flight
    run.start()
    run.train()
    summary = run.finish()
    keep_finished(out_dir, key)
    return summary


# ================================================================ finished runs survive a rerun

FINISHED_DIR = ".finished"
INTERRUPTED_DIR = ".interrupted"
#: Files of a run folder that are its state in progress, not its result (and callbacks' *.partial.csv).
IN_PROGRESS = ("checkpoint.pt",)


def _in_progress_files(out_dir: str) -> list[str]:
    return [n for n in os.listdir(out_dir) if n in IN_PROGRESS or n.endswith(".partial.csv")]


def spec_key(spec: dict) -> str:
    """A short hash of a validated spec."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def prepare_folder(out_dir: str, spec: dict) -> None:
    """Make ``out_dir`` ready for a run of ``spec`` without losing anything: remove the temporary
    files of a killed write; move an interrupted run of another spec aside (checkpoint.pt and the
    callbacks' *.partial.csv go to ``.interrupted/<its spec>/``, and come back when that spec runs
    again); bring back this spec's own interrupted run if it was moved aside."""
    import shutil

    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(out_dir):  # temporary files of a killed write
        if name.startswith(".tmp-"):
            os.remove(os.path.join(out_dir, name))
    rolling = os.path.join(out_dir, "checkpoint.pt")
    if os.path.exists(rolling):
        theirs = load_checkpoint(rolling).get("spec")
        diff = spec_differences(theirs, spec)
        if not diff:
            return
        parked = os.path.join(out_dir, INTERRUPTED_DIR, spec_key(theirs))
        shutil.rmtree(parked, ignore_errors=True)
        os.makedirs(parked)
        for name in _in_progress_files(out_dir):
            os.replace(os.path.join(out_dir, name), os.path.join(parked, name))
        print(f"[train {out_dir}] an interrupted run of another spec (differs in: {', '.join(diff[:8])}) "
              f"was moved to {parked}; it resumes when its spec runs again", file=sys.stderr)
    mine = os.path.join(out_dir, INTERRUPTED_DIR, spec_key(spec))
    if os.path.isfile(os.path.join(mine, "checkpoint.pt")):
        for name in os.listdir(mine):
            os.replace(os.path.join(mine, name), os.path.join(out_dir, name))
        os.rmdir(mine)
        print(f"[train {out_dir}] resuming this spec's interrupted run, moved aside earlier", file=sys.stderr)


def run_key(spec: dict, code=("delay_stability.train",), extra=None) -> str:
    """``<spec hash>-<code hash>``: what a finished run's results depend on (the validated spec,
    the caller's ``extra`` settings, and the code of the ``code`` modules with what they import)."""
    import hashlib
    import json
    from pathlib import Path

    from .files import code_hash

    text = json.dumps({"spec": spec, "extra": extra}, sort_keys=True, default=str)
    spec_part = hashlib.sha256(text.encode()).hexdigest()[:12]
    code = tuple(code)
    if code not in _CODE_HASHES:  # once per process: the code does not change while it runs
        _CODE_HASHES[code] = code_hash(list(code), Path(__file__).resolve().parents[1])
    return f"{spec_part}-{_CODE_HASHES[code]}"


_CODE_HASHES: dict = {}


def finished_runs(out_dir: str) -> list[str]:
    """The keys of the finished runs kept in ``out_dir`` (at most the last one, and a newer one)."""
    root = os.path.join(out_dir, FINISHED_DIR)
    if not os.path.isdir(root):
        return []
    return sorted(k for k in os.listdir(root) if not k.startswith(".") and os.path.isfile(os.path.join(root, k, "MANIFEST")))


def _copy(src: str, dst: str) -> None:
    """``dst`` becomes a copy of ``src`` (its own bytes: damage to one in place leaves the other
    intact; never a hard link), atomically."""
    import shutil

    tmp = os.path.join(os.path.dirname(dst), ".tmp-copy-" + os.path.basename(dst))
    if os.path.exists(tmp):
        os.remove(tmp)
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def keep_finished(out_dir: str, key: str) -> None:
    """Keep copies of the result files of the finished run in ``out_dir`` under ``.finished/<key>/``
    (a MANIFEST, written last, lists each with its SHA-256) and drop the finished runs of other keys."""
    import shutil

    from .files import sha256_file

    root = os.path.join(out_dir, FINISHED_DIR)
    names = sorted(n for n in os.listdir(out_dir)
                   if not n.startswith(".") and n not in IN_PROGRESS and os.path.isfile(os.path.join(out_dir, n)))
    work = os.path.join(root, f".tmp-{key}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    lines = []
    for name in names:
        _copy(os.path.join(out_dir, name), os.path.join(work, name))
        lines.append(f"{name}\t{sha256_file(os.path.join(work, name))}")
    _atomic_write(os.path.join(work, "MANIFEST"), lambda f: f.write("\n".join(lines).encode() + b"\n"))
    final = os.path.join(root, key)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(work, final)
    for other in os.listdir(root):
        if other != key:
            shutil.rmtree(os.path.join(root, other), ignore_errors=True)


def verified_finished(out_dir: str, key: str):
    """The file names of the kept finished run of ``key`` when every kept copy still has the
    SHA-256 its MANIFEST lists; None otherwise (none kept, an old MANIFEST without checksums, or a
    damaged copy: the run is computed again rather than restored from damaged bytes)."""
    from .files import sha256_file

    store = os.path.join(out_dir, FINISHED_DIR, key)
    try:
        with open(os.path.join(store, "MANIFEST")) as f:
            rows = [line.split("\t") for line in f.read().splitlines() if line]
    except OSError:
        return None
    if not rows or any(len(r) != 2 for r in rows):
        return None
    for name, digest in rows:
        path = os.path.join(store, name)
        if not os.path.isfile(path) or sha256_file(path) != digest:
            print(f"[train {out_dir}] the kept copy {path} is damaged (checksum differs); computing the run again",
                  file=sys.stderr)
            return None
    return [name for name, _ in rows]


def restore_finished(out_dir: str, key: str):
    """When ``out_dir`` has lost the result files of a finished run of ``key`` (and holds no run in
    progress), put them back from ``.finished/<key>/`` (copies, checked against their SHA-256) and
    return its summary; else None."""
    store = os.path.join(out_dir, FINISHED_DIR, key)
    if os.path.exists(os.path.join(out_dir, "checkpoint.pt")):
        return None
    names = verified_finished(out_dir, key)
    if not names:
        return None
    for name in names:
        _copy(os.path.join(store, name), os.path.join(out_dir, name))
    print(f"[train {out_dir}] restored the finished run {key} (same spec and code, checksums verified) from {store}",
          file=sys.stderr)
    from .files import read_json

    return read_json(os.path.join(out_dir, "summary.json"), "run summary")


# ================================================================ command line


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
