"""Ensembles: R independent training runs of one model family in one process, as one batched
computation (``torch.func``: ``stack_module_state``, ``functional_call``, ``vmap``, ``grad``).

    run_ensemble(specs, out_dirs) -> [summary, ...]     one run folder per spec, as run_training writes it
    can_ensemble(specs) -> (ok, reason)                 whether run_ensemble takes these specs

Member r ends as ``train.run_training(specs[r], out_dirs[r])`` would (to rounding: the batched
kernels sum in another order; float64 agrees to ~1e-12 relative, float32 to ~1e-6), writing the same
files: metrics.csv, summary.json, run.json (with ``"ensemble": {"members": R, "index": r}``) and
final.pt; the rolling checkpoint.pt of each member has the single run's format (it holds that
member's own model, DelayedSGD state with its in-flight updates, data generator and loop), so resume
is per member and bit-for-bit with an uninterrupted ensemble.

What the members share (else a UserError saying to use ``train.run_training``): model, model_args,
dataset, dataset_args, dtype, device, loss, batch_size, epochs, eval_every, checkpoint_every,
threads, the velocity convention (``optimizer.velocity``), and the delay: a constant tau (round
robin), M workers of one drawn schedule (random: the geometric staleness of *Asynchrony begets
Momentum*; gaussian: the authors' rule; compute_time; replay of a landing log), or one delay
distribution P(tau = k) (the iid ring of eq. 18). What they may differ in: lr, seed (initialisation,
minibatch order and the landing worker or delay of every step: each member draws it from
``random.Random(seed)`` exactly as its DelayedSGD does, with asgd's own landing rules),
lr_schedule (warm-up from warmup_start included: train.get_lr), momentum, variant (plain / momentum /
shifted), dampening, weight_decay and weight_decay_on (``weights``: a per-weight decay vector, zero
on biases and BatchNorm parameters, as train.decay_groups' two parameter groups; the member's
checkpoint keeps the single run's groups and group-by-group buffer layout), velocity_start (torch's
u = G on a velocity's first update: asgd.update's ``fresh`` mask, per member), the schedule's own
arguments (spread, compute_time, landing_log) and the stop rules.

What batches: the quick stand-ins (mlp, cnn_digits with or without BatchNorm, resnet_digits) and the
paper-scale networks without BatchNorm (fc3x1024, mnist_cnn, cifar10_quick) on the in-memory datasets
(digits, mnist1d, mnist, cifar10, cifar100) without augmentation. BatchNorm is per member: batch statistics of
its own minibatch in training (and for L0), its own running statistics (stacked buffers, updated in
place) in evaluation, as a single run's model.train()/model.eval(). What falls back (``can_ensemble``
says why, and the workflow trains each spec with ``run_training``): the paper-scale BatchNorm networks,
imagenet streaming, augment, mitigations, performance settings, init_checkpoint and perturb.

One engine: the loop state (train.LoopState), the stop rules (train.check_stop via end_epoch: divergence,
escape, settle, steady state), the metrics row (train.metrics_row), the learning rate (train.get_lr) and
the set-up (train.training_setup) are Run's own; the loop below follows Run.train's phases.

Kernels (``KERNELS``): "stacked" runs the R members as one network with R groups in every convolution
(members along the channel axis; see _Stacked), "vmap" uses torch.func (any network); "auto" takes
stacked where every layer has a stacked form. benchmarks/ensemble.py measures them.

Divergence: a member whose epoch train loss is NaN/inf or > loss_factor * L0 is recorded "diverged"
at that epoch, its outputs are written and it leaves the batch (no more updates); the others go on.
Likewise a member that stops by another rule. Resume: members whose checkpoints stand at different
epochs (a kill while the members' checkpoints were being written) train as separate batches.
"""

from __future__ import annotations

import bisect
import math
import os
import random
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from . import __version__
from .asgd import (
    as_probabilities,
    draw_index,
    draw_compute_time,
    gaussian_landing_probabilities,
    has_in_flight,
    optimizer_state,
    update,
    velocity_rows,
    without_in_flight,
)
from .errors import UserError
from .files import write_json
from .models import CifarResNet, DigitsResNet, CifarBasicBlock, build_model
from .spec import BATCHED_MODELS, ENSEMBLE_SHARED_KEYS as SHARED_KEYS, can_ensemble, validate_spec  # noqa: F401
from .spec import check_compute_time, delay_probabilities
from .spec import ensemble_problem as _why_not
from .train import (
    NAN_CHECK_EVERY,
    LoopState,
    Run,
    end_epoch,
    get_lr,
    keep_finished,
    metrics_row,
    needs_grad_norm,
    prepare_folder,
    restore_finished,
    run_key,
    save_checkpoint,
    summary_record,
    training_setup,
    write_metrics,
)

CODE = ("delay_stability.ensemble",)
#: How the members' forward and backward passes are batched: "stacked" (members along the channel
#: axis, grouped convolutions; every quick stand-in), "vmap" (torch.func over any network), or
#: "auto" (stacked where every layer has a stacked form).
KERNELS = ("auto", "stacked", "vmap")
#: Convolutional members train in batches of at most this many (benchmarks/results/ensemble.json:
#: with 1 thread, 64 stacked cnn_digits members ran slower than one by one, 16 faster; the grouped
#: convolutions are compute-bound, and larger batches only add memory traffic). None: no limit.
MAX_CONV_MEMBERS = 16
FALLBACK = "; use train.run_training for each spec"


# ================================================================ what batches
# (in spec.py, which imports no torch: the workflow decides what batches when it builds the DAG)


def _tau(spec: dict) -> int:
    """The largest staleness a ring slot can hold: M - 1 for M workers, K for P(tau = k), k = 0..K."""
    o = spec["optimizer"]
    if isinstance(o["delay"], dict):
        return len(as_probabilities(delay_probabilities(o["delay"]))) - 1
    return o["workers"] - 1 if o["workers"] is not None else o["delay"]


# ================================================================ one member's bookkeeping


def _histogram(t: int, tau: int) -> list[int]:
    """Staleness counts after t round-robin steps: step i lands g(w_{max(i - tau, 0)}), staleness min(i, tau)."""
    hist = [1 if k < t else 0 for k in range(min(t, tau))]
    if t > tau:
        hist.append(t - tau)
    return hist


class Member:
    """Host-side state of one member (index ``index`` of R): spec, folder, loop dict, data
    generator, initial weights; while it is out of the batch also its flat weights and buffers."""

    def __init__(self, index, spec, out_dir, key):
        self.index, self.spec, self.out_dir, self.key = index, spec, out_dir, key
        self.tau = _tau(spec)
        self.slots = self.tau + 1
        o = spec["optimizer"]
        self.variant, self.m, self.dampening, self.wd = o["variant"], o["momentum"], o["dampening"], o["weight_decay"]
        # weight_decay_on: weights with a decay: the single run's two parameter groups (train.decay_groups)
        self.split = o["weight_decay_on"] == "weights" and self.wd != 0
        self.velocity = o["velocity"]  # velocity units (asgd.update); members of a batch share them
        self.velocity_start = o["velocity_start"]
        self.schedule = o["schedule"]
        # every schedule but round robin keeps DelayedSGD's bookkeeping here, draw for draw
        self.drawn = self.schedule != "round_robin"
        self.rng = random.Random(spec["seed"])
        self.spread = None if o["spread"] is None else float(o["spread"])
        self.compute_time = check_compute_time(o["compute_time"] or {"law": "exponential"}) \
            if self.schedule == "compute_time" else None
        self.landing_order = self.probs = self.cdf = None
        if self.schedule == "iid":  # DelayedSGD's i.i.d. delays: P(tau = k) as it normalises them
            self.probs = as_probabilities(delay_probabilities(o["delay"]))
            self.cdf = np.cumsum(self.probs).tolist()
        if self.schedule == "replay":
            from .staleness import landing_order

            self.landing_order = [int(k) for k in landing_order(o["landing_log"])]
        self.finish: list[float] = []  # compute_time: each worker's finish time (drawn as DelayedSGD does)
        if self.schedule == "compute_time":
            self.finish = [draw_compute_time(self.compute_time, self.rng) for _ in range(self.slots)]
        self.stamps = [0] * self.slots  # step at whose weights each slot's gradient was taken
        self.free = 0  # the slot that receives the next gradient
        self.hist: list[int] = []
        self.last_staleness = None
        self.fresh = [True] * velocity_rows(self.variant, self.slots)  # velocity rows never written
        self.generator = torch.Generator().manual_seed(spec["seed"])
        self.loop = LoopState()
        self.rng_torch = None  # the global torch RNG as the single run leaves it after building its model
        self.w = self.w0 = self.ring = self.vel = None  # flat weights (P,), initial (P,), (K, P), (rows, P)
        self.bufs: dict = {}  # the network's buffers (BatchNorm running statistics), by name
        self.lr_now = spec["lr"]
        self.t0 = time.time()
        self.epoch_result = None  # (loss, error, lr) of an epoch cut short by a NaN check

    # ---- the single run's summaries

    def histogram(self) -> list[int]:
        return list(self.hist) if self.drawn else _histogram(self.loop.step, self.tau)

    def staleness(self) -> tuple[int, int]:
        hist = self.histogram()
        return sum(k * c for k, c in enumerate(hist)), sum(hist)

    def worker_step(self, t: int) -> tuple[int, int, int]:
        """DelayedSGD.step's bookkeeping for a drawn schedule at step t: the write slot takes g(w_t)
        (all slots at t = 0): the free worker (the one that landed last), or t mod K for the iid
        ring; then the landing slot (DelayedSGD._landing, the same draws from the same
        random.Random(seed)). Returns (write, land, velocity row written): the landing worker's row,
        the server's (momentum), or the iid ring's (t + 1) mod K, which takes over the landing row's."""
        K = self.slots
        iid = self.schedule == "iid"
        write = t % K if iid else self.free
        self.stamps[write] = t
        if t == 0:
            self.stamps = [0] * self.slots
        v_write = None
        if self.schedule == "random":
            land = self.rng.randrange(K)
        elif self.schedule == "gaussian":
            land = draw_index(gaussian_landing_probabilities([t - s for s in self.stamps], K, self.spread), self.rng.random())
        elif self.schedule == "compute_time":
            land = min(range(K), key=self.finish.__getitem__)  # the earliest finisher
            self.finish[land] += draw_compute_time(self.compute_time, self.rng)
        elif self.schedule == "replay":
            land = self.landing_order[t % len(self.landing_order)]
        else:  # iid: tau_t drawn from P(tau = k); g(w_{t - tau}) sits at (t - tau) mod K
            tau = min(bisect.bisect_right(self.cdf, self.rng.random() * self.cdf[-1]), K - 1)
            land, v_write = (t - tau) % K, (t + 1) % K
        staleness = t - self.stamps[land]
        if staleness >= len(self.hist):
            self.hist.extend([0] * (staleness + 1 - len(self.hist)))
        self.hist[staleness] += 1
        self.last_staleness = staleness
        self.free = land
        if self.variant == "momentum":
            return write, land, 0
        return write, land, land if v_write is None else v_write

    def take_fresh(self, read: int, write: int) -> bool:
        """Whether this step's velocity update is torch's first (u = G: velocity_start gradient and
        the row never written); row ``write`` takes over row ``read``'s flag (the iid ring), then is
        marked written (DelayedSGD._apply's flags)."""
        if not self.fresh:
            return False
        self.fresh[write] = self.fresh[read]
        first = self.fresh[write] and self.velocity_start == "gradient"
        self.fresh[write] = False
        return first

    def mean_staleness(self) -> float:
        total, count = self.staleness()
        return total / count if count else float("nan")

    def buffer_bytes(self, numel: int, element_size: int) -> int:
        """DelayedSGD.buffer_bytes: the in-flight slots, the velocity rows and the flat weight row."""
        return (self.slots + velocity_rows(self.variant, self.slots) + 1) * numel * element_size

    def optimizer_state(self, fam) -> dict:
        """This member's DelayedSGD.state_dict() (asgd.optimizer_state), t steps taken: its parameter
        groups, and the in-flight gradients and velocities in their layout (group by group)."""
        t, K = self.loop.step, self.slots
        hyper = {"lr": self.lr_now, "momentum": self.m, "dampening": self.dampening, "weight_decay": self.wd}
        n_params = len(fam.names)
        ring, vel = self.ring, self.vel
        if self.split:
            n = len(fam.decayed_params)
            groups = [dict(hyper, params=list(range(n))), dict(hyper, weight_decay=0.0, params=list(range(n, n_params)))]
            ring = ring.index_select(1, fam.group_columns)
            vel = None if vel is None else vel.index_select(1, fam.group_columns)
        else:
            groups = [dict(hyper, params=list(range(n_params)))]
        common = dict(param_groups=groups, variant=self.variant, num_slots=K, grads=ring.clone(),
                      velocity=None if vel is None else vel.clone(), t=t,
                      velocity_units=self.velocity, velocity_start=self.velocity_start, fresh=list(self.fresh),
                      extra={"spread": self.spread, "compute_time": self.compute_time,
                             "landing_order": self.landing_order})
        if self.drawn:
            schedule_state = {"finish": list(self.finish)} if self.schedule == "compute_time" else {}
            return optimizer_state(schedule=self.schedule, probs=self.probs, stamps=self.stamps, free=self.free,
                                   rng_state=self.rng.getstate(), hist=self.hist, last_staleness=self.last_staleness,
                                   schedule_state=schedule_state, **common)
        stamps = [0 if t - 1 < s else s + K * ((t - 1 - s) // K) for s in range(K)]
        return optimizer_state(schedule="round_robin", stamps=stamps, free=t % K,
                               rng_state=random.Random(self.spec["seed"]).getstate(), hist=_histogram(t, self.tau),
                               last_staleness=min(t - 1, self.tau) if t else None, **common)


# ================================================================ members stacked along the channel axis
#
# The fast kernel for convolutional members (the default where every layer is known; vmap otherwise):
# R members of one network run as ONE network whose convolutions have R groups. Images are
# (N, R*C, H, W), member r owning channels r*C..(r+1)*C-1, so that per-channel layers (BatchNorm,
# ReLU, pooling) act on every member at once with no reshuffling, and BatchNorm's batch and running
# statistics are per member by construction; features are (R, N, F) and linear layers are batched
# matrix products. The result is the same network function for each member (the sums run in another
# order), and autograd of sum_r L_r gives each member its own gradient.


def _to_image(x, R: int):
    """Per-member inputs (R, N, C, H, W) as stacked images (N, R*C, H, W)."""
    R, N, C, H, W = x.shape
    return x.transpose(0, 1).reshape(N, R * C, H, W)


class _Stacked:
    """The forward pass of R members of ``template`` at once (see above); ``supports(template)``
    says whether every module of it is known here."""

    LEAVES = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Tanh, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Linear)
    BLOCKS = (nn.Sequential, CifarBasicBlock, DigitsResNet, CifarResNet)
    channels_last = False  # NHWC images (measured in benchmarks/ensemble.py: slower on this CPU)

    @classmethod
    def supports(cls, template: nn.Module) -> bool:
        return all(isinstance(m, cls.LEAVES + cls.BLOCKS) for m in template.modules())

    def __init__(self, template: nn.Module):
        self.template = template
        self.path = {m: name for name, m in template.named_modules()}

    def __call__(self, params: dict, bufs: dict, x, train: bool):
        """Logits (R, N, classes) of every member; x: (R, N, ...) per member or (N, ...) shared;
        BatchNorm in training mode updates ``bufs`` (stacked (R, ...)) in place."""
        self.p, self.b, self.train = params, bufs, train
        self.R = next(iter(params.values())).shape[0]
        self.shared = x.dim() == 4  # one batch of images (N, C, H, W) for every member (full batch)
        return self.run(self.template, x, None)[0]

    def q(self, m, name):
        key = f"{self.path[m]}.{name}" if self.path[m] else name
        return self.p[key] if key in self.p else self.b.get(key)

    def run(self, m, x, image):
        """(output, image?) of module m on x; image None = the raw input, not yet converted."""
        R = self.R
        if isinstance(m, nn.Sequential):
            for child in m:
                x, image = self.run(child, x, image)
            return x, image
        if isinstance(m, nn.Conv2d):
            groups = m.groups * R
            if image is None and self.shared:  # the members' filters side by side on the one input
                groups = m.groups
            elif image is None:
                x = _to_image(x, R)
            if self.channels_last and image is None:
                x = x.contiguous(memory_format=torch.channels_last)
            w, b = self.q(m, "weight"), self.q(m, "bias")
            out = F.conv2d(x, w.reshape(-1, *w.shape[2:]), None if b is None else b.reshape(-1),
                           m.stride, m.padding, m.dilation, groups)
            return out, True
        if isinstance(m, nn.BatchNorm2d):
            rm, rv = self.q(m, "running_mean"), self.q(m, "running_var")
            if self.train and m.track_running_stats:
                self.q(m, "num_batches_tracked").add_(1)
            out = F.batch_norm(x, rm.view(-1), rv.view(-1), self.q(m, "weight").reshape(-1),
                               self.q(m, "bias").reshape(-1), self.train, m.momentum, m.eps)
            return out, image
        if isinstance(m, (nn.ReLU, nn.Tanh)):
            return (torch.relu(x) if isinstance(m, nn.ReLU) else torch.tanh(x)), image
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            return m(x), image
        if isinstance(m, nn.Flatten):
            if image:
                return x.reshape(x.shape[0], R, -1).transpose(0, 1), False
            if self.shared:  # one input for every member: (N, F), broadcast by the first linear layer
                return x.reshape(x.shape[0], -1), False
            return x.reshape(R, x.shape[1], -1), False
        if isinstance(m, nn.Linear):
            w, b = self.q(m, "weight"), self.q(m, "bias")
            if x.dim() == 2:  # shared input (N, F): one matrix product for all members
                out = torch.matmul(x, w.transpose(1, 2))
            else:
                out = torch.bmm(x, w.transpose(1, 2))
            return (out if b is None else out + b.unsqueeze(1)), False
        if isinstance(m, CifarBasicBlock):
            out, _ = self.run(m.conv1, x, True)
            out, _ = self.run(m.bn1, out, True)
            out, _ = self.run(m.conv2, torch.relu(out), True)
            out, _ = self.run(m.bn2, out, True)
            shortcut = x
            if m.stride != 1 or m.pad:
                shortcut = x[:, :, :: m.stride, :: m.stride]
                N, RC, H, W = shortcut.shape
                shortcut = F.pad(shortcut.reshape(N, R, RC // R, H, W),
                                 (0, 0, 0, 0, m.pad // 2, m.pad - m.pad // 2)).reshape(N, -1, H, W)
            return torch.relu(out + shortcut), True
        if isinstance(m, (DigitsResNet, CifarResNet)):
            out, _ = self.run(m.conv, x, image)
            out, _ = self.run(m.bn, out, True)
            out, _ = self.run(m.blocks, torch.relu(out), True)
            out = F.adaptive_avg_pool2d(out, 1)
            return self.run(m.fc, out.reshape(out.shape[0], R, -1).transpose(0, 1), False)
        raise TypeError(f"no stacked form of {type(m).__name__}")  # supports() rules this out


# ================================================================ the engine


class _Family:
    """What all members share: the data, the template network, its parameter layout, the loss."""

    def __init__(self, spec: dict, kernel: str = "auto"):
        self.spec = spec
        self.final_in_flight = False  # final.pt without the in-flight buffers (run_ensemble's final_in_flight)
        setup = training_setup(spec)  # Run's own set-up: device, dtype, data, batch sizes, intervals
        self.device, self.dtype, self.data = setup.device, setup.dtype, setup.data
        self.batch_size, self.steps_per_epoch, self.full_batch = setup.batch_size, setup.steps_per_epoch, setup.full_batch
        self.eval_batch, self.checkpoint_every = setup.eval_batch, setup.checkpoint_every
        self.template = build_model(spec["model"], **spec["model_args"]).to(self.device, self.dtype)
        self.names, self.shapes, self.offsets = [], [], []
        off = 0
        for name, p in self.template.named_parameters():
            self.names.append(name)
            self.shapes.append(tuple(p.shape))
            self.offsets.append((off, p.numel()))
            off += p.numel()
        self.numel = off
        # weight_decay_on: weights (train.decay_groups): the weights of convolutions and linear layers
        # are decayed, every other parameter is not; the single run's DelayedSGD lays its flat buffers
        # out group by group (decayed first), ``group_columns`` maps that layout onto this one
        conv_linear = (nn.modules.conv._ConvNd, nn.Linear)
        weights = {id(m.weight) for m in self.template.modules() if isinstance(m, conv_linear) and m.weight is not None}
        decayed = [id(p) in weights for p in self.template.parameters()]
        self.decayed_params = [i for i, d in enumerate(decayed) if d]
        cols = [torch.arange(o, o + k) for i, (o, k) in enumerate(self.offsets) if decayed[i]]
        cols += [torch.arange(o, o + k) for i, (o, k) in enumerate(self.offsets) if not decayed[i]]
        self.group_columns = torch.cat(cols).to(self.device)
        self.decay_mask = torch.cat([torch.full((k,), 1.0 if decayed[i] else 0.0, dtype=self.dtype)
                                     for i, (_, k) in enumerate(self.offsets)]).to(self.device)
        self.buffer_names = [name for name, _ in self.template.named_buffers()]
        self.keys = list(self.template.state_dict().keys())  # the single run's state_dict order
        self.mse = spec["loss"] == "mse"
        self.num_classes = self.data.num_classes if hasattr(self.data, "num_classes") else None

        def forward(params, buffers, x):
            # BatchNorm in training mode normalises by this member's batch statistics and updates its
            # running statistics in place: ``buffers`` are this member's slice of the stacked buffers
            return functional_call(self.template, (params, buffers), (x,))

        def member_loss(params, buffers, x, target):
            out = forward(params, buffers, x)
            if self.mse:  # train.build_loss's mse, with the one-hot target made outside vmap
                loss = 0.5 * (out - target).pow(2).sum(dim=1).mean()
            else:
                loss = F.cross_entropy(out, target)
            return loss, out

        self._member_loss = member_loss
        self._forward = forward

        def total_loss(params, buffers, x, target, x_dim):
            losses, outs = vmap(member_loss, in_dims=(0, 0, x_dim, x_dim))(params, buffers, x, target)
            return losses.sum(), (losses, outs)  # d(sum_r L_r)/dw_r = dL_r/dw_r: the members are independent

        self._grad_fns = {d: grad(lambda p, b, x, t, d=d: total_loss(p, b, x, t, d), has_aux=True) for d in (0, None)}
        self._eval_fn = vmap(member_loss, in_dims=(0, 0, None, None))
        if kernel not in KERNELS:
            raise UserError(f"ensemble kernel {kernel!r}: choose {', '.join(KERNELS)}")
        if kernel == "auto":
            kernel = "stacked" if _Stacked.supports(self.template) else "vmap"
        elif kernel == "stacked" and not _Stacked.supports(self.template):
            raise UserError(f"model {spec['model']!r} has layers with no stacked form; use kernel vmap")
        self.kernel = kernel
        self._stacked = _Stacked(self.template) if kernel == "stacked" else None
        convolutional = any(isinstance(m, nn.Conv2d) for m in self.template.modules())
        self.max_members = MAX_CONV_MEMBERS if convolutional else None

    # ---- the batched loss, gradient and evaluation (either kernel)

    def _losses(self, out, target):
        """Per-member mean loss (R,) of logits (R, N, K): train.build_loss's, member by member."""
        if self.mse:
            return 0.5 * (out - target).pow(2).sum(dim=-1).mean(dim=-1)
        R, N, K = out.shape
        target = target.expand(R, N) if target.dim() == 1 else target
        return F.cross_entropy(out.reshape(R * N, K), target.reshape(R * N), reduction="none").view(R, N).mean(dim=1)

    def grads(self, params: dict, bufs: dict, x, target, x_dim):
        """({name: dL_r/dw_r stacked (R, *shape)}, (losses (R,), logits (R, N, K))) at the
        members' weights, BatchNorm in training mode (its running statistics in ``bufs`` updated);
        x: (R, N, ...) per member (x_dim 0) or (N, ...) shared (x_dim None)."""
        if self._stacked is None:
            return self._grad_fns[x_dim](params, bufs, x, target)
        leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
        with torch.enable_grad():
            out = self._stacked(leaves, bufs, x, True)
            losses = self._losses(out, target)
            gs = torch.autograd.grad(losses.sum(), [leaves[n] for n in self.names])
        return dict(zip(self.names, gs)), (losses.detach(), out.detach())

    def evaluate(self, params: dict, bufs: dict, x, target, train: bool):
        """(losses (R,), logits (R, N, K)) on one batch shared by every member, BatchNorm in
        training mode (updating ``bufs``) or in eval mode."""
        if self._stacked is not None:
            out = self._stacked(params, bufs, x, train)
            return self._losses(out, target), out
        self.template.train(train)
        try:
            return self._eval_fn(params, bufs, x, target)
        finally:
            self.template.train(True)

    # ---- layout

    def views(self, flat: torch.Tensor) -> dict:
        """Per-parameter views (R, *shape) of a flat (R, P) tensor."""
        R = flat.shape[0]
        return {n: flat[:, o:o + k].view(R, *s) for n, s, (o, k) in zip(self.names, self.shapes, self.offsets)}

    def state_dict(self, w: torch.Tensor, bufs: dict) -> dict:
        """The single run's ``model.state_dict()`` from flat weights (P,) and buffers, in its order."""
        params = {n: w[o:o + k].view(s).clone() for n, s, (o, k) in zip(self.names, self.shapes, self.offsets)}
        return {k: params[k] if k in params else bufs[k].clone() for k in self.keys}

    def stack_buffers(self, members) -> dict:
        """The members' buffers stacked along a leading member axis (R, *shape)."""
        return {n: torch.stack([m.bufs[n] for m in members]) for n in self.buffer_names}

    def flatten(self, state: dict) -> torch.Tensor:
        return torch.cat([state[n].to(self.device, self.dtype).reshape(-1) for n in self.names])

    def target(self, y: torch.Tensor):
        return F.one_hot(y, self.out_features).to(self.dtype) if self.mse else y

    @property
    def out_features(self) -> int:
        return self.shapes[-1][0]

    # ---- evaluation, as Run._mean_loss does it

    @torch.no_grad()
    def mean_loss(self, w: torch.Tensor, bufs: dict, batches, train: bool) -> tuple[list[float], list[float]]:
        """Per member: mean loss and error over ``batches``, with BatchNorm in training mode (batch
        statistics; the running statistics are left untouched, as Run._initial_train_loss does) or in
        eval mode (the running statistics, as Run._row's validation)."""
        R = w.shape[0]
        params = self.views(w)
        if train:
            bufs = {n: b.clone() for n, b in bufs.items()}
        total = torch.zeros(R, dtype=torch.float64, device=self.device)
        wrong = torch.zeros(R, dtype=torch.int64, device=self.device)
        n = count = 0
        loss = None
        for x, y in batches:
            loss, out = self.evaluate(params, bufs, x, self.target(y), train)
            loss = loss.double()
            total += loss * len(y)
            wrong += (out.argmax(-1) != y).sum(dim=1)
            n += len(y)
            count += 1
        means = loss.tolist() if count == 1 else [v / n for v in total.tolist()]
        return means, [v / n for v in wrong.tolist()]

    @torch.no_grad()
    def norms(self, w: torch.Tensor) -> list[float]:
        """_flat_norm per row: sqrt of the sum over parameters of each one's float64 sum of squares."""
        parts = [w[:, o:o + k].double().pow(2).sum(dim=1) for o, k in self.offsets]
        sums = torch.stack(parts, dim=1).tolist()
        return [math.sqrt(sum(row)) for row in sums]


def _rows(fam: _Family, members: list[Member], w: torch.Tensor, bufs: dict, epoch: int, stats) -> None:
    """Append the metrics row of ``epoch`` (train.metrics_row) to each member's loop; ``w`` (R, P)
    and ``bufs`` are their weights and buffers, stats = [(train_loss, error, lr)] one per member."""
    val_loss, val_error = fam.mean_loss(w, bufs, fam.data.val_batches(fam.eval_batch), train=False)
    w0 = torch.stack([m.w0 for m in members])
    weight_norm, dist = fam.norms(w), fam.norms(w - w0)
    now = time.time()
    for i, m in enumerate(members):
        loss, error, lr = stats[i]
        m.loop.rows.append(metrics_row(m.loop, epoch, lr, (loss, error), (val_loss[i], val_error[i]), weight_norm[i],
                                       dist[i], m.staleness(), m.loop.seconds + now - m.t0))


def _one(m: Member) -> tuple[torch.Tensor, dict]:
    """A member out of the batch as a batch of one: weights (1, P) and buffers (1, ...)."""
    return m.w.unsqueeze(0), {n: b.unsqueeze(0) for n, b in m.bufs.items()}


def _payload(fam: _Family, m: Member, in_flight: bool = True) -> dict:
    """The single run's checkpoint of member ``m`` (Run.save's keys); ``in_flight=False``: without
    the in-flight buffers (``asgd.without_in_flight``) and the starting weights, as final.pt keeps it."""
    now = time.time()
    m.loop.seconds += now - m.t0
    m.t0 = now
    return {
        "spec": m.spec,
        "model": fam.state_dict(m.w, m.bufs),
        "optimizer": m.optimizer_state(fam) if in_flight else without_in_flight(m.optimizer_state(fam)),
        "init_params": ([m.w0[o:o + k].view(s).clone() for s, (o, k) in zip(fam.shapes, fam.offsets)]
                        if in_flight else None),
        "rng": {"torch": m.rng_torch, "cuda": None, "data": m.generator.get_state()},
        "loop": m.loop.to_dict(),
        "epoch": m.loop.epoch,
        "step": m.loop.step,
        "metrics": m.loop.rows,
        "package_version": __version__,
        "callbacks": [],
    }


def _summary(fam: _Family, m: Member) -> dict:
    """Run.summary for one member (train.summary_record)."""
    return summary_record(m.loop, m.mean_staleness(),
                          m.buffer_bytes(fam.numel, torch.empty((), dtype=fam.dtype).element_size()), m.histogram())


def _finish(fam: _Family, m: Member, members: int) -> dict:
    """Run.finish for one member: final.pt, metrics.csv, summary.json, run.json; drop checkpoint.pt."""
    out = m.out_dir
    save_checkpoint(os.path.join(out, "final.pt"), _payload(fam, m, in_flight=fam.final_in_flight))
    write_metrics(os.path.join(out, "metrics.csv"), m.loop.rows)
    summary = _summary(fam, m)
    write_json(os.path.join(out, "summary.json"), summary)
    prov = Run.provenance(SimpleNamespace(spec=m.spec, device=fam.device, loop=m.loop))
    prov["ensemble"] = {"members": members, "index": m.index}
    write_json(os.path.join(out, "run.json"), prov)
    rolling = os.path.join(out, "checkpoint.pt")
    if os.path.exists(rolling):
        os.remove(rolling)
    keep_finished(out, m.key)
    return summary


class _Batch:
    """The members still training, as stacked tensors: weights (R, P), ring (K, R, P), velocities."""

    def __init__(self, fam: _Family, members: list[Member]):
        self.fam, self.members = fam, members
        self.K = members[0].slots
        self.drawn = members[0].drawn
        self.w = torch.stack([m.w for m in members])
        self.bufs = fam.stack_buffers(members)
        self.grad_norms = any(needs_grad_norm(m.spec["stop"]) for m in members)
        self.last_grads = None  # (R, P): the last step's gradients, for the steady-state rule's norm
        self.ring = torch.stack([m.ring for m in members], dim=1).contiguous()
        variants = {m.variant for m in members}
        rows = self.K if "shifted" in variants else (1 if "momentum" in variants else 0)
        self.vel = None
        if rows:
            zero = torch.zeros(rows, fam.numel, dtype=fam.dtype, device=fam.device)
            vs = []
            for m in members:
                v = zero.clone()
                if m.vel is not None:
                    v[: m.vel.shape[0]] = m.vel
                vs.append(v)
            self.vel = torch.stack(vs, dim=1).contiguous()
        self._set_hyper()

    def _set_hyper(self):
        fam, ms = self.fam, self.members
        kw = dict(dtype=fam.dtype, device=fam.device)
        self.groups = []
        for variant in ("plain", "momentum", "shifted"):
            idx = [i for i, m in enumerate(ms) if m.variant == variant]
            if idx:
                whole = len(idx) == len(ms)
                self.groups.append((variant, None if whole else torch.tensor(idx, device=fam.device), idx))
        self.m_vec = torch.tensor([m.m for m in ms], **kw).unsqueeze(1)
        self.d_vec = torch.tensor([m.m if m.dampening else 0.0 for m in ms], **kw).unsqueeze(1)
        self.any_wd = any(m.wd != 0 for m in ms)
        self.wd_vec = torch.tensor([m.wd for m in ms], **kw).unsqueeze(1) if self.any_wd else 0.0
        split = [m.split for m in ms]
        if any(split):  # weight_decay_on: weights: a decay per weight (R, P), zero off the conv/linear weights
            ones = torch.ones_like(fam.decay_mask)
            self.wd_vec = self.wd_vec * torch.stack([fam.decay_mask if s else ones for s in split])
        self.start_gradient = any(m.velocity_start == "gradient" for m in ms)
        self.velocity = ms[0].velocity
        self._lrs = None
        self.kw = kw

    def set_lrs(self, lrs: list[float]) -> None:
        if lrs == self._lrs:
            return
        self._lrs = lrs
        self.lr_vec = torch.tensor(lrs, **self.kw).unsqueeze(1)

    @torch.no_grad()
    def step(self, t: int, x, target, x_dim) -> tuple[torch.Tensor, torch.Tensor]:
        """One DelayedSGD step (round robin or random workers) for every member; returns (losses (R,), outputs)."""
        fam = self.fam
        with torch.enable_grad():
            grads, (losses, outs) = fam.grads(fam.views(self.w), self.bufs, x, target, x_dim)
        R, K = self.w.shape[0], self.K
        flat = torch.cat([grads[n].reshape(R, -1) for n in fam.names], dim=1)
        if self.grad_norms:
            self.last_grads = flat
        if self.drawn:  # each member's own landing worker (DelayedSGD's draws), gathered per member
            slots = [m.worker_step(t) for m in self.members]
            write = torch.tensor([w for w, _, _ in slots], device=fam.device)
            land = torch.tensor([l for _, l, _ in slots], device=fam.device)
            vrow = torch.tensor([v for _, _, v in slots], device=fam.device)
            rows = torch.arange(R, device=fam.device)
            self.ring[write, rows] = flat
            if t == 0:  # every worker starts from w_0: all slots hold g(w_0)
                self.ring.copy_(flat.unsqueeze(0).expand_as(self.ring))
            g = self.ring[land, rows]
            firsts = [m.take_fresh(l if m.variant == "shifted" else 0, v) for m, (_, l, v) in zip(self.members, slots)]
        else:
            write = t % K
            self.ring[write].copy_(flat)
            if t == 0:  # every worker starts from w_0: all slots hold g(w_0)
                self.ring.copy_(self.ring[write].expand_as(self.ring))
            land = vrow = (t + 1) % K
            g = self.ring[land]
            firsts = [m.take_fresh(*(2 * [0 if m.variant == "momentum" else land])) for m in self.members]
        # firsts: torch's u = G on a velocity's first update (velocity_start gradient), per member
        every = torch.arange(R, device=fam.device)
        for variant, idx, rows_of in self.groups:  # asgd.update on each variant's members, (R', P) at once
            sub = (lambda a: a) if idx is None else (lambda a: a.index_select(0, idx))
            fresh = False
            if self.start_gradient and any(firsts[i] for i in rows_of):
                fresh = torch.tensor([firsts[i] for i in rows_of], device=fam.device).unsqueeze(1)
            hyper = dict(lr=sub(self.lr_vec), momentum=sub(self.m_vec), dampening=sub(self.d_vec),
                         weight_decay=sub(self.wd_vec) if self.any_wd else 0.0, variant=variant,
                         velocity=self.velocity, fresh=fresh)
            w, gg = sub(self.w), sub(g)
            if variant == "plain":
                u = None
            elif variant == "shifted" and self.drawn:  # each member's landing worker's row
                u = self.vel[land, every] if idx is None else self.vel[land.index_select(0, idx), idx]
            else:
                u = sub(self.vel[0 if variant == "momentum" else land])
            update(w, gg, u, **hyper)
            if idx is not None:
                self.w.index_copy_(0, idx, w)
            if variant == "shifted" and self.drawn:  # the row written (the iid ring's: (t + 1) mod K)
                mine = every if idx is None else idx
                self.vel[vrow.index_select(0, mine), mine] = u
            elif variant != "plain" and idx is not None:
                self.vel[0 if variant == "momentum" else land].index_copy_(0, idx, u)
        return losses.detach(), outs.detach()

    def extract(self, i: int) -> None:
        """Copy member i's state out of the batch (into its Member)."""
        m = self.members[i]
        m.w = self.w[i].clone()
        m.bufs = {n: b[i].clone() for n, b in self.bufs.items()}
        m.ring = self.ring[:, i].clone()
        if m.variant == "plain" or self.vel is None:
            m.vel = None
        else:
            m.vel = self.vel[: (1 if m.variant == "momentum" else self.K), i].clone()

    def keep(self, keep: list[int]) -> None:
        """Drop the members not in ``keep`` (their state extracted first)."""
        idx = torch.tensor(keep, device=self.fam.device)
        self.members = [self.members[i] for i in keep]
        self.w = self.w.index_select(0, idx)
        self.bufs = {n: b.index_select(0, idx) for n, b in self.bufs.items()}
        if self.last_grads is not None:
            self.last_grads = self.last_grads.index_select(0, idx)
        self.ring = self.ring.index_select(1, idx).contiguous()
        if self.vel is not None:
            self.vel = self.vel.index_select(1, idx).contiguous()
        self._set_hyper()


def _batch_order(fam: _Family, members: list[Member]):
    """Each member's permutation of the training set for one epoch, drawn from its own generator as
    TensorDataset.train_batches draws it, stacked (R, N); None when training is full batch (the
    stored tensor, no permutation, no generator draw)."""
    if fam.full_batch:
        return None
    orders = torch.stack([torch.randperm(fam.data.num_train, generator=m.generator) for m in members])
    return orders.to(fam.data.train_x.device)


def _train_group(fam: _Family, members: list[Member], total_members: int, summaries: dict) -> None:
    """Train members that stand at the same epoch and step to the end, as one batch: Run.train's
    loop (one epoch per pass, in the same phases), every member's state stacked along axis 0."""
    epochs = fam.spec["epochs"]
    for m in members:
        m.t0 = time.time()
    batch = _Batch(fam, members)
    spe, data = fam.steps_per_epoch, fam.data
    while batch.members and batch.members[0].loop.epoch < epochs:
        ms = batch.members
        epoch = ms[0].loop.epoch + 1
        t = ms[0].loop.step
        R = len(ms)
        # ---- train one epoch: every member's minibatch, one batched forward/backward, the DelayedSGD step
        total = torch.zeros(R, dtype=torch.float64, device=fam.device)
        wrong = torch.zeros(R, dtype=torch.int64, device=fam.device)
        n, loss, lrs = 0, None, None
        cut = []  # members whose epoch a NaN check ended early (Run._train_epoch breaks out)
        orders = _batch_order(fam, ms)
        for start in ([None] if orders is None else range(0, data.num_train, fam.batch_size)):
            ms = batch.members
            if orders is None:
                x, y, x_dim = data.train_x, data.train_y, None
            else:
                idx = orders[:, start:start + fam.batch_size]
                x, y, x_dim = data.train_x[idx], data.train_y[idx], 0
            lrs = [get_lr(m.spec, epoch - 1, t, spe) for m in ms]
            batch.set_lrs(lrs)
            loss, out = batch.step(t, x, fam.target(y), x_dim)
            t += 1
            total += loss.double() * y.shape[-1]
            wrong += (out.argmax(-1) != y).sum(dim=-1)
            n += y.shape[-1]
            if not fam.full_batch and t % NAN_CHECK_EVERY == 0:
                bad = (~torch.isfinite(loss)).nonzero().flatten().tolist()
                if bad:  # these members' epochs end here, as their single runs' do; they leave the batch
                    sums, wr = total.tolist(), wrong.tolist()
                    for i in bad:
                        m = ms[i]
                        m.lr_now, m.loop.step = lrs[i], t
                        batch.extract(i)
                        m.epoch_result = (sums[i] / n, wr[i] / n, lrs[i], None)
                        cut.append(m)
                    keep = [i for i in range(len(ms)) if i not in bad]
                    if not keep:
                        batch.members = []
                        break
                    batch.keep(keep)
                    k = torch.tensor(keep, device=fam.device)
                    total, wrong = total.index_select(0, k), wrong.index_select(0, k)
                    orders = orders.index_select(0, k.to(orders.device))
                    lrs = [lrs[i] for i in keep]
        ms = batch.members
        if ms:  # the epoch's train loss and error of the members that ran all of it
            losses = loss.double().tolist() if fam.full_batch else [v / n for v in total.tolist()]
            errors = [v / n for v in wrong.tolist()]
            grad_norms = fam.norms(batch.last_grads) if batch.last_grads is not None else [None] * len(ms)
            for i, m in enumerate(ms):
                m.lr_now, m.loop.step = lrs[i], t
                m.epoch_result = (losses[i], errors[i], lrs[i], grad_norms[i])
        # ---- stop rules (train.check_stop, as Run's)
        for m in ms + cut:
            loss_e, _, _, grad_norm = m.epoch_result
            end_epoch(m.loop, m.spec["stop"], epoch, loss_e, grad_norm)
        # ---- evaluate: rows for every member on eval epochs and the last one, and for members that stop
        eval_epoch = epoch % fam.spec["eval_every"] == 0 or epoch == epochs
        need = [i for i, m in enumerate(ms) if eval_epoch or m.loop.status is not None]
        if need:
            sel = torch.tensor(need, device=fam.device)
            _rows(fam, [ms[i] for i in need], batch.w.index_select(0, sel),
                  {k: b.index_select(0, sel) for k, b in batch.bufs.items()}, epoch,
                  [ms[i].epoch_result[:3] for i in need])
        for m in cut:
            _rows(fam, [m], *_one(m), epoch, [m.epoch_result[:3]])
        # ---- members that stopped leave the batch and are finished
        stopped = [i for i, m in enumerate(ms) if m.loop.status is not None]
        for i in stopped:
            batch.extract(i)
        if stopped:
            batch.keep([i for i in range(len(ms)) if i not in stopped])
        for m in [ms[i] for i in stopped] + cut:
            summaries[m.index] = _finish(fam, m, total_members)
        for m in batch.members:
            m.epoch_result = None
        # ---- checkpoint every member (each its single run's checkpoint.pt)
        if batch.members and epoch % fam.checkpoint_every == 0 and epoch < epochs:
            for i, m in enumerate(batch.members):
                batch.extract(i)
                save_checkpoint(os.path.join(m.out_dir, "checkpoint.pt"), _payload(fam, m))
                write_metrics(os.path.join(m.out_dir, "metrics.csv"), m.loop.rows)
    for i, m in enumerate(batch.members):
        batch.extract(i)
        if m.loop.status is None:
            m.loop.status = "completed"
        summaries[m.index] = _finish(fam, m, total_members)


def run_ensemble(specs, out_dirs, *, kernel: str = "auto", final_in_flight: bool = False) -> list[dict]:
    """Train every spec as one batched ensemble, member r writing ``out_dirs[r]`` as
    ``train.run_training(specs[r], out_dirs[r], final_in_flight=final_in_flight)`` would (resuming
    each from its checkpoint of the same spec); returns the summaries in order. UserError when the
    specs cannot be batched (``can_ensemble`` gives the reason): train those with ``run_training``."""
    specs = [validate_spec(s) for s in specs]
    out_dirs = [os.fspath(d) for d in out_dirs]
    if len(out_dirs) != len(specs):
        raise UserError(f"run_ensemble: {len(specs)} specs but {len(out_dirs)} output folders")
    if len(set(map(os.path.abspath, out_dirs))) != len(out_dirs):
        raise UserError("run_ensemble: every member needs its own output folder")
    reason = _why_not(specs)
    if reason is not None:
        raise UserError(f"cannot train these specs as one ensemble: {reason}{FALLBACK}")
    R = len(specs)
    fam = _Family(specs[0], kernel)
    fam.final_in_flight = final_in_flight
    summaries: dict[int, dict] = {}
    pending = []
    code_part = run_key(specs[0], CODE).rsplit("-", 1)[1]  # hashing the code costs ~0.5 s: once
    for r, (spec, out) in enumerate(zip(specs, out_dirs)):
        prepare_folder(out, spec)
        key = f"{_spec_part(spec)}-{code_part}"
        restored = restore_finished(out, key)
        if restored is not None:
            summaries[r] = restored
            continue
        m = Member(r, spec, out, key)
        ckpt = Run._existing_checkpoint(SimpleNamespace(out_dir=out, spec=spec))
        if ckpt is not None:
            _restore(fam, m, ckpt)
        else:
            _init(fam, m)
        pending.append(m)
    fresh = [m for m in pending if m.loop.rows == []]
    if fresh:
        _start(fam, fresh)
    for m in [m for m in pending if m.loop.status is not None]:  # a finished run found as final.pt
        summaries[m.index] = _finish(fam, m, R)
    active = [m for m in pending if m.loop.status is None]
    by_step: dict[int, list[Member]] = {}
    for m in active:  # members resumed from checkpoints of different epochs train as separate batches
        by_step.setdefault(m.loop.step, []).append(m)
    for step in sorted(by_step):
        group = by_step[step]
        size = fam.max_members or len(group)
        for start in range(0, len(group), size):  # convolutional members: batches of at most MAX_CONV_MEMBERS
            _train_group(fam, group[start:start + size], R, summaries)
    return [summaries[r] for r in range(R)]


def _spec_part(spec: dict) -> str:
    """The spec half of train.run_key(spec, CODE) (extra None)."""
    import hashlib
    import json

    text = json.dumps({"spec": spec, "extra": None}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _init(fam: _Family, m: Member) -> None:
    """Run.__init__'s model: torch.manual_seed(seed), then build_model (the same RNG draws)."""
    torch.manual_seed(m.spec["seed"])
    model = build_model(m.spec["model"], **m.spec["model_args"]).to(fam.device, fam.dtype)
    m.rng_torch = torch.get_rng_state()
    m.w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    m.bufs = {n: b.detach().clone() for n, b in model.named_buffers()}
    m.w0 = m.w.clone()
    m.ring = torch.zeros(m.slots, fam.numel, dtype=fam.dtype, device=fam.device)
    rows = {"plain": 0, "momentum": 1, "shifted": m.slots}[m.variant]
    m.vel = torch.zeros(rows, fam.numel, dtype=fam.dtype, device=fam.device) if rows else None


def _start(fam: _Family, members: list[Member]) -> None:
    """Run.start for fresh members: L0 over unshuffled training batches in the training step's mode
    (BatchNorm batch statistics, running statistics untouched), then the row of epoch 0."""
    w, bufs = torch.stack([m.w for m in members]), fam.stack_buffers(members)
    batches = fam.data.train_batches(fam.batch_size, shuffle=False, augment=False)
    losses, errors = fam.mean_loss(w, bufs, batches, train=True)
    stats = []
    for m, loss, error in zip(members, losses, errors):
        m.loop.initial_train_loss, m.loop.initial_train_error = loss, error
        m.t0 = time.time()
        stats.append((loss, error, get_lr(m.spec, 0, 0, fam.steps_per_epoch)))
    _rows(fam, members, w, bufs, 0, stats)


def _restore(fam: _Family, m: Member, ckpt: dict) -> None:
    """Run._restore for one member from its checkpoint (the single run's format)."""
    m.w = fam.flatten(ckpt["model"])
    m.bufs = {n: ckpt["model"][n].to(fam.device).clone() for n in fam.buffer_names}
    m.w0 = (m.w.clone() if ckpt.get("init_params") is None  # a finished run's final.pt: no more steps
            else torch.cat([t.to(fam.device, fam.dtype).reshape(-1) for t in ckpt["init_params"]]))
    opt = ckpt["optimizer"]
    delayed = opt["delayed"]
    schedule = {"distribution": "iid"}.get(delayed["schedule"], delayed["schedule"])
    if schedule != m.schedule or delayed["num_slots"] != m.slots or delayed["variant"] != m.variant:
        raise UserError(f"{m.out_dir}: its checkpoint does not fit this spec's optimizer")
    units = delayed.get("velocity_units", "step")  # a checkpoint without units predates them: step units
    start = delayed.get("velocity_start", "zero")
    if m.variant != "plain" and (units, start) != (m.velocity, m.velocity_start):
        raise UserError(f"{m.out_dir}: its checkpoint keeps velocities as velocity {units!r}, velocity_start {start!r} "
                        f"but the spec asks for optimizer.velocity {m.velocity!r}, velocity_start {m.velocity_start!r}; "
                        f"rerun it (or set them as the checkpoint has them)")
    if m.drawn:
        m.stamps, m.free = list(delayed["stamps"]), int(delayed["free"])
        version, internal, gauss = delayed["rng"]
        m.rng.setstate((version, tuple(internal), gauss))
        m.hist, m.last_staleness = list(delayed["hist"]), delayed["last_staleness"]
        m.finish = [float(x) for x in delayed.get("schedule_state", {}).get("finish", m.finish)]
    m.fresh = [bool(f) for f in delayed.get("fresh", [False] * len(m.fresh))]
    if has_in_flight(opt):
        ring = delayed["grads"].to(fam.device, fam.dtype)
        vel = None if delayed["velocity"] is None else delayed["velocity"].to(fam.device, fam.dtype)
    else:  # a finished run's final.pt (without_in_flight): it is not stepped on, only written again
        ring = torch.zeros(m.slots, fam.numel, device=fam.device, dtype=fam.dtype)
        rows = velocity_rows(m.variant, m.slots)
        vel = torch.zeros(rows, fam.numel, device=fam.device, dtype=fam.dtype) if rows else None
    if len(opt["param_groups"]) > 1:  # weight_decay_on: weights: the buffers are laid out group by group
        if not m.split:
            raise UserError(f"{m.out_dir}: its checkpoint has {len(opt['param_groups'])} parameter groups but the "
                            "spec decays all parameters alike")
        ring = torch.empty_like(ring).index_copy_(1, fam.group_columns, ring)
        vel = None if vel is None else torch.empty_like(vel).index_copy_(1, fam.group_columns, vel)
    elif m.split:
        raise UserError(f"{m.out_dir}: its checkpoint has one parameter group but the spec has weight_decay_on: weights")
    m.ring = ring.clone()
    m.vel = None if vel is None else vel.clone()
    m.lr_now = opt["param_groups"][0]["lr"]
    m.loop = LoopState.from_dict(ckpt["loop"])
    m.rng_torch = ckpt["rng"]["torch"]
    m.generator.set_state(ckpt["rng"]["data"])
    m.t0 = time.time()


# ================================================================ command line


def _cli_ensemble(args) -> int:
    from .files import read_json

    specs = read_json(args.specs, "--specs")
    if not isinstance(specs, list):
        raise UserError(f"--specs {args.specs}: expected a JSON list of training specs")
    summaries = run_ensemble(specs, args.out)
    for out, s in zip(args.out, summaries):
        print(f"{out}: {s['status']} after {s['epochs_run']} epochs")
    if args.record:
        write_json(args.record, {"members": [{"out": o, "status": s["status"]} for o, s in zip(args.out, summaries)]})
    return 0


def register(subparsers) -> None:
    """Add ``ensemble``: R runs of one model family as one batched job."""
    p = subparsers.add_parser(
        "ensemble",
        description="Train the specs of a JSON list as one batched ensemble; member r writes the run folder "
                    "--out[r] exactly as `delay-stability train` would (see delay_stability.ensemble).")
    p.add_argument("--specs", required=True, metavar="JSON", help="a JSON file: the list of training specs")
    p.add_argument("--out", nargs="+", required=True, metavar="DIR", help="one run folder per spec, in order")
    p.add_argument("--record", default=None, metavar="JSON", help="write the members' folders and statuses here")
    p.set_defaults(func=_cli_ensemble)


if __name__ == "__main__":  # pragma: no cover - used by the SIGKILL test: python -m delay_stability.ensemble SPECS.json DIR...
    import json

    with open(sys.argv[1]) as f:
        _specs = json.load(f)
    run_ensemble(_specs, sys.argv[2:])
