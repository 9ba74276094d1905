"""DelayedSGD: asynchronous SGD (A-SGD) with stale gradients, as a drop-in torch optimizer.

The delay model of Giladi et al. (ICLR 2020), eq. 2:

    w_{t+1} = w_t - eta * g(w_{t - tau_t}),

where g(w_s) is the (stochastic) gradient the user computed at step s. The user's loop stays
``loss.backward(); opt.step()``: at every step the gradient is taken at the *current* weights (what
a worker that has just read the weights computes) and joins a pool of in-flight updates; a
schedule decides which one lands:

* ``schedule="round_robin"`` (constant delay tau): tau+1 in-flight slots served in turn, so the
  update applied at step t is g(w_{t-tau}). All workers start from w_0, so the first tau+1 updates
  use the gradient taken at w_0 (the slots are filled with the first gradient).
* ``schedule="random"`` (M workers, the queueing model of *Asynchrony begets Momentum*): the
  landing worker is drawn uniformly among M; it then reads the new weights and computes the next
  gradient. Staleness is geometric, P(tau = k) = (1/M)(1 - 1/M)^k, with mean M - 1.
* ``schedule="distribution"`` (stochastic delay, eq. 18): tau_t is drawn from a given probability
  vector P(tau = k), k = 0..K, and the update applied is g(w_{t - tau_t}) from a ring of the last
  K+1 gradients (g(w_0) stands in for steps before 0).

Momentum (section 2.2.2 and appendix D), with dampening (drop the (1-m) with dampening=False):

* ``variant="momentum"`` -- server momentum, one velocity (eq. 9 / eq. 22):
      v <- m v - eta (1-m) g_landed,    w <- w + v.
* ``variant="shifted"`` -- shifted momentum, one velocity per worker slot (eq. 10):
      v_{t+1} = m v_{t-tau} - eta (1-m) g(w_{t-tau}),    w_{t+1} = w_t + v_{t+1}.

Weight decay is applied at the server on the current weights: g_landed + wd * w_t.

Delay mitigations (``mitigation=NAME``, ``mitigation_args={...}``; plain variant only; None, the
default, is plain delayed SGD, bit for bit): each rule changes how the landing gradient g_s,
s = t - tau_t, enters the update; tau_t is the staleness of that update. Equations and papers in
``theory`` section 6 (``MITIGATIONS``, ``MITIGATION_DEFAULTS``):

* ``staleness-aware``:   w <- w - (eta / max(1, tau_t)) g_s                      (Zhang et al. 2016)
* ``delay-adaptive``:    w <- w - eta n / max(n, tau_t) g_s, n = workers           (Mishchenko et al. 2022)
* ``delay-adaptive-threshold``: eta_t = eta if tau_t <= tau_c else min(eta, 1/(4 L tau_t))
                         (Koloskova et al. 2022; L = ``smoothness`` must be given)
* ``dc-asgd-c`` / ``dc-asgd-a``: w <- w - eta (g_s + lambda g_s*g_s*(w_t - w_s)), w_s the weights the
  landing worker read (the per-worker backup of Zheng et al. 2017, not MXNet's one-step w_t - w_{t-1});
  lambda constant, or lambda_t = lambda0 / sqrt(MS_t + ms_eps), MS_t = m MS_{t-1} + (1-m) g_s^2.
* ``spike-compensation``: v <- beta v + g_s, w <- w - eta (beta^tau_t v + (1-beta^tau_t)/(1-beta) g_s)
  (Kosson et al. 2021).
* ``weight-prediction``: v <- beta v + g_s, w <- w - eta v, and the next gradient is taken at the
  prediction w_hat = w - eta (beta - beta^(tau+1))/(1-beta) v (DANA-style, tau = slots - 1). The
  *parameters hold w_hat* (the point the user's loop differentiates); ``true_weights()`` gives w.
* ``gap-aware``: g <- g_s / (1 + |w_t - w_s| / (tau_t eta (sqrt(v_hat) + eps))) elementwise, v_hat the
  bias-corrected EMA (``ema``) of g_s^2 (Barkai et al. 2020; no penalty at tau_t = 0).

Weight decay with a mitigation joins the landed gradient (g_s + wd w_t) before the rule.

Memory: one flat buffer of slots x parameters for the in-flight gradients (plus one flat velocity,
or one per slot for shifted momentum); the step copies the fresh gradient into its slot and applies
the landing slot in place, with no allocation per step. BatchNorm running statistics are not
optimizer state: they are updated in the forward pass at the current weights (the authors' code
delays them too, with the model replicas).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence

import numpy as np
import torch

from .spec import SCHEDULES  # one list of schedules, shared with the spec
from .theory import VARIANTS  # one list of variants: plain, momentum, shifted
from .theory import check_mitigation

#: Mitigations that keep w_s, the weights each in-flight gradient was taken at (one row per slot).
_NEEDS_BACKUP = ("dc-asgd-c", "dc-asgd-a", "gap-aware")


def _as_probabilities(delay) -> list[float]:
    """A probability vector P(tau = k), k = 0..K, checked and normalised to sum exactly 1."""
    probs = np.asarray(delay, dtype=np.float64)
    if probs.ndim != 1 or probs.size == 0:
        raise ValueError("delay: a delay distribution must be a non-empty 1-D probability vector")
    if not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise ValueError("delay: probabilities must be finite and >= 0")
    total = probs.sum()
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"delay: probabilities must sum to 1 (they sum to {total:.6g})")
    last = int(np.flatnonzero(probs)[-1])  # drop trailing zeros: they only cost memory
    return (probs[: last + 1] / total).tolist()


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class DelayedSGD(torch.optim.Optimizer):
    """SGD whose every update is a stale gradient (eq. 2), optionally with momentum (eq. 9, 10).

    Args:
        params: parameters or parameter groups (each group may set its own ``lr``,
            ``momentum``, ``dampening`` and ``weight_decay``).
        lr: learning rate eta > 0.
        delay: constant delay tau >= 0 (round robin); or, with ``schedule="distribution"``, a 1-D
            sequence of probabilities P(tau = k), k = 0..K (a sequence implies that schedule).
        workers: number of in-flight workers M for ``schedule="random"`` (default delay + 1);
            with round robin, M = tau + 1 may be given instead of ``delay``.
        schedule: ``"round_robin"``, ``"random"`` or ``"distribution"``.
        momentum: m in (-1, 1); needs ``variant="momentum"`` or ``"shifted"`` when non-zero.
        variant: ``"plain"``, ``"momentum"`` (server momentum, eq. 9) or ``"shifted"`` (eq. 10).
        dampening: multiply the gradient by (1 - m) in the velocity update (the paper's form).
        weight_decay: L2 coefficient, applied at the server on the current weights.
        seed: seed of the schedule's random draws (random and distribution schedules).
        mitigation: None (plain delayed SGD) or one of ``theory.MITIGATIONS`` (see the module doc).
        mitigation_args: that rule's hyperparameters (defaults ``theory.MITIGATION_DEFAULTS``).

    All parameters must share one dtype and device (one flat buffer holds their slots).
    """

    def __init__(
        self,
        params,
        lr: float,
        delay=0,
        workers: int | None = None,
        schedule: str = "round_robin",
        momentum: float = 0.0,
        variant: str = "plain",
        dampening: bool = True,
        weight_decay: float = 0.0,
        seed: int = 0,
        mitigation: str | None = None,
        mitigation_args: dict | None = None,
    ):
        if isinstance(delay, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(delay, str):
            if schedule == "round_robin":
                schedule = "distribution"
        _check_hyperparameters(lr, momentum, weight_decay)
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r} (choose {', '.join(VARIANTS)})")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r} (choose {', '.join(SCHEDULES)})")
        if variant == "plain" and momentum != 0:
            raise ValueError(f"momentum={momentum} needs variant='momentum' or variant='shifted'")

        self.schedule = schedule
        self.variant = variant
        self.mitigation, self.mitigation_args = None, {}
        if mitigation is not None:
            self.mitigation, self.mitigation_args = check_mitigation(mitigation, mitigation_args)
            if variant != "plain":
                raise ValueError(f"mitigation {mitigation!r} replaces the update: it needs variant='plain', "
                                 f"not {variant!r}")
            if mitigation == "delay-adaptive-threshold" and self.mitigation_args["smoothness"] is None:
                raise ValueError("mitigation 'delay-adaptive-threshold' needs smoothness L (e.g. the sharpness)")
        elif mitigation_args:
            raise ValueError("mitigation_args given without a mitigation")
        self.probs: list[float] | None = None
        self.num_slots = self._slots_for_schedule(delay, workers)
        self._cdf = None if self.probs is None else np.cumsum(self.probs).tolist()

        defaults = dict(lr=lr, momentum=momentum, dampening=bool(dampening), weight_decay=weight_decay)
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_hyperparameters(group["lr"], group["momentum"], group["weight_decay"])
            if variant == "plain" and group["momentum"] != 0:
                raise ValueError("a parameter group sets momentum but variant='plain'")
        self._build_buffers()
        self._build_mitigation_buffers()

        self._t = 0  # steps taken
        self._free = 0  # the slot that receives the next gradient
        self._stamps = [0] * self.num_slots  # step at whose weights each slot's gradient was taken
        self._rng = random.Random(seed)
        self._hist: list[int] = []  # _hist[k] = number of landed updates with staleness k
        self.last_staleness: int | None = None
        self._frozen = True

    # ---------------------------------------------------------------- set-up

    def _slots_for_schedule(self, delay, workers) -> int:
        """Number of in-flight slots: tau+1 (round robin), M (random), K+1 (distribution)."""
        if self.schedule == "distribution":
            if workers is not None:
                raise ValueError("workers is not used with schedule='distribution' (give delay probabilities)")
            if isinstance(delay, (int, np.integer)) and not isinstance(delay, bool):
                raise ValueError("schedule='distribution' needs delay as a probability vector P(tau=k), k=0..K")
            self.probs = _as_probabilities(delay)
            return len(self.probs)
        tau = _check_int("delay", delay, 0)
        if workers is not None:
            workers = _check_int("workers", workers, 1)
        if self.schedule == "random":
            if workers is None:
                return tau + 1
            if tau not in (0, workers - 1):
                raise ValueError(f"delay={tau} and workers={workers} disagree (random schedule: mean staleness is workers-1)")
            return workers
        if workers is not None and tau not in (0, workers - 1):
            raise ValueError(f"delay={tau} and workers={workers} disagree (round robin: workers = delay + 1)")
        return workers if workers is not None else tau + 1

    def add_param_group(self, param_group):
        """Register a group (constructor only: the flat buffer is laid out once).

        Written out here rather than inherited: torch's version imports torch._dynamo, which
        costs seconds per process, and the pipeline starts hundreds of short runs.
        """
        if getattr(self, "_frozen", False):
            raise RuntimeError("DelayedSGD keeps one flat buffer: give all parameter groups to the constructor")
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        seen = {id(p) for group in self.param_groups for p in group["params"]}
        for p in params:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"DelayedSGD can only optimize tensors, got {type(p).__name__}")
            if not (p.is_leaf or p.retains_grad):
                raise ValueError("DelayedSGD cannot optimize a non-leaf tensor")
            if id(p) in seen:
                raise ValueError("a parameter appears twice in DelayedSGD's parameter groups")
            seen.add(id(p))
        group = dict(param_group, params=params)
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        self.param_groups.append(group)

    def _build_buffers(self) -> None:
        """One flat (slots x P) gradient buffer and its per-parameter views, laid out group by group."""
        self._params = [p for group in self.param_groups for p in group["params"]]
        if not self._params:
            raise ValueError("DelayedSGD got an empty parameter list")
        first = self._params[0]
        for p in self._params:
            if p.dtype != first.dtype or p.device != first.device:
                raise ValueError("DelayedSGD needs all parameters on one device with one dtype")
            if p.is_sparse:
                raise ValueError("DelayedSGD does not support sparse parameters")
        numel = sum(p.numel() for p in self._params)
        kw = dict(dtype=first.dtype, device=first.device)
        self._grads = torch.zeros(self.num_slots, numel, **kw)
        velocity_rows = {"plain": 0, "momentum": 1, "shifted": self.num_slots}[self.variant]
        self._velocity = torch.zeros(velocity_rows, numel, **kw) if velocity_rows else None

        self._group_ranges = []  # (first param index, last+1, first element, last+1) per group
        offsets, i, off = [], 0, 0
        for group in self.param_groups:
            i0, off0 = i, off
            for p in group["params"]:
                offsets.append((off, p.numel()))
                off += p.numel()
                i += 1
            self._group_ranges.append((i0, i, off0, off))
        self._grad_views = [self._views(self._grads[s], offsets) for s in range(self.num_slots)]
        self._velocity_views = (
            [self._views(self._velocity[r], offsets) for r in range(velocity_rows)] if velocity_rows else []
        )

    def _views(self, row: torch.Tensor, offsets) -> list[torch.Tensor]:
        return [row[o : o + n].view_as(p) for (o, n), p in zip(offsets, self._params)]

    # ---------------------------------------------------------------- the step

    @torch.no_grad()
    def step(self, closure=None):
        """Store the fresh gradient g(w_t), then apply the update the schedule lands (eq. 2/9/10)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        t = self._t
        if t == 0 and self._true is not None:  # weight prediction: w_0 is what the parameters hold now
            self._gather(self._true)
        write = self._write_slot(t)
        self._store_gradient(write, fill_all=(t == 0))
        land, velocity_read, velocity_write = self._landing(t)
        if self.variant == "momentum":  # one server velocity
            velocity_read = velocity_write = 0
        staleness = t - self._stamps[land]
        self._record(staleness)
        if self.mitigation is None:
            self._apply(land, velocity_read, velocity_write)
        else:
            self._apply_mitigation(land, staleness)
        self._free = land
        self._t = t + 1
        return loss

    def _write_slot(self, t: int) -> int:
        """Round robin and distribution: a ring indexed by t; random: the worker that just landed."""
        return self._free if self.schedule == "random" else t % self.num_slots

    def _store_gradient(self, slot: int, fill_all: bool) -> None:
        views = self._grad_views[slot]
        grads, targets = [], []
        for p, view in zip(self._params, views):
            if p.grad is None:
                view.zero_()
            elif p.grad.is_sparse:
                raise RuntimeError("DelayedSGD does not support sparse gradients")
            else:
                grads.append(p.grad)
                targets.append(view)
        if targets:
            torch._foreach_copy_(targets, grads)
        self._stamps[slot] = self._t
        if self._backup is not None:  # w_s: the weights this gradient was taken at
            self._gather(self._backup[slot])
        if fill_all:  # every worker starts from w_0: all slots hold g(w_0)
            for s in range(self.num_slots):
                if s != slot:
                    self._grads[s].copy_(self._grads[slot])
                    self._stamps[s] = self._t
                    if self._backup is not None:
                        self._backup[s].copy_(self._backup[slot])

    def _landing(self, t: int) -> tuple[int, int, int]:
        """(landing slot, velocity row read, velocity row written) for step t."""
        K = self.num_slots
        if self.schedule == "round_robin":
            land = (t + 1) % K  # holds g(w_{t-tau}), tau = K-1
            return land, land, land
        if self.schedule == "random":
            land = self._rng.randrange(K)
            return land, land, land
        tau = bisect.bisect_right(self._cdf, self._rng.random() * self._cdf[-1])
        tau = min(tau, K - 1)
        land = (t - tau) % K  # holds g(w_{max(t - tau, 0)})
        return land, land, (t + 1) % K  # v_{t-tau} sits at (t-tau) mod K; v_{t+1} goes to (t+1) mod K

    def _record(self, staleness: int) -> None:
        if staleness >= len(self._hist):
            self._hist.extend([0] * (staleness + 1 - len(self._hist)))
        self._hist[staleness] += 1
        self.last_staleness = staleness

    def _apply(self, land: int, v_read: int, v_write: int) -> None:
        g_all = self._grad_views[land]
        for group, (i0, i1, e0, e1) in zip(self.param_groups, self._group_ranges):
            if i0 == i1:
                continue
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            params, grads = self._params[i0:i1], g_all[i0:i1]
            if self.variant == "plain":
                if wd != 0:
                    torch._foreach_mul_(params, 1.0 - lr * wd)  # w - eta*wd*w
                torch._foreach_add_(params, grads, alpha=-lr)  # w - eta*g  (eq. 2)
                continue
            scale = lr * (1.0 - m) if group["dampening"] else lr
            v_new = self._velocity[v_write, e0:e1]
            if v_read != v_write:
                v_new.copy_(self._velocity[v_read, e0:e1])
            v_new.mul_(m).add_(self._grads[land, e0:e1], alpha=-scale)  # m v - eta(1-m) g
            velocity = self._velocity_views[v_write][i0:i1]
            if wd != 0:
                torch._foreach_add_(velocity, params, alpha=-scale * wd)  # ... - eta(1-m) wd w
            torch._foreach_add_(params, velocity)  # w + v  (eq. 9 / eq. 10)

    # ---------------------------------------------------------------- delay mitigations

    def _build_mitigation_buffers(self) -> None:
        """Flat buffers of a mitigation: w_s per slot (DC-ASGD, gap-aware), the rule's moments, the
        true weights (weight prediction) and two scratch rows. None of them without a mitigation."""
        self._backup = self._ms = self._mvel = self._true = self._scratch = None
        self._mit_steps = 0
        name = self.mitigation
        if name is None:
            return
        numel = self._grads.shape[1]
        kw = dict(dtype=self._grads.dtype, device=self._grads.device)
        self._scratch = torch.zeros(2, numel, **kw)  # [0]: w_t, [1]: the update
        if name in _NEEDS_BACKUP:
            self._backup = torch.zeros(self.num_slots, numel, **kw)
        if name in ("dc-asgd-a", "gap-aware"):
            self._ms = torch.zeros(numel, **kw)  # MS_t (DC-ASGD-a) or v (gap-aware)
        if name in ("spike-compensation", "weight-prediction"):
            self._mvel = torch.zeros(numel, **kw)
        if name == "weight-prediction":
            self._true = torch.zeros(numel, **kw)
            self._gather(self._true)

    def _gather(self, row: torch.Tensor) -> torch.Tensor:
        """Copy the parameters into the flat row (P,) and return it."""
        off = 0
        for p in self._params:
            n = p.numel()
            row[off : off + n].copy_(p.detach().reshape(-1))
            off += n
        return row

    def _scatter_add(self, row: torch.Tensor, alphas) -> None:
        """params += alpha_g * row[group slice], per parameter group."""
        off = 0
        for (i0, i1, e0, e1), alpha in zip(self._group_ranges, alphas):
            for p in self._params[i0:i1]:
                n = p.numel()
                p.add_(row[off : off + n].view_as(p), alpha=alpha)
                off += n

    def _nominal_delay(self) -> float:
        """tau of the weight prediction: slots - 1 (round robin: tau; random: the mean M - 1),
        or the mean of the delay distribution."""
        if self.probs is not None:
            return float(np.dot(np.arange(len(self.probs)), self.probs))
        return float(self.num_slots - 1)

    def _step_scale(self, group, staleness: int) -> float:
        """eta_t / eta of the step-size rules (staleness-aware, delay-adaptive, the threshold rule)."""
        name, hp = self.mitigation, self.mitigation_args
        if name == "staleness-aware":
            return 1.0 / max(1, staleness)
        if name == "delay-adaptive":
            n = self.num_slots if hp["workers"] is None else int(hp["workers"])
            return n / max(n, staleness)
        if name == "delay-adaptive-threshold":
            tau_c = self.num_slots if hp["tau_c"] is None else int(hp["tau_c"])
            if staleness <= tau_c:
                return 1.0
            lr = group["lr"]
            return min(lr, 1.0 / (4.0 * float(hp["smoothness"]) * staleness)) / lr
        return 1.0

    def _apply_mitigation(self, land: int, staleness: int) -> None:
        """The update of the chosen rule (module doc; equations in ``theory`` section 6)."""
        name, hp = self.mitigation, self.mitigation_args
        g = self._grads[land]
        w = self._gather(self._scratch[0]) if self._true is None else self._true
        u = self._scratch[1]
        u.copy_(g)
        for group, (i0, i1, e0, e1) in zip(self.param_groups, self._group_ranges):
            if group["weight_decay"] != 0:
                u[e0:e1].add_(w[e0:e1], alpha=group["weight_decay"])  # g_s + wd w_t
        self._mit_steps += 1
        if name in ("dc-asgd-c", "dc-asgd-a"):
            correction = g * g * (w - self._backup[land])  # g_s * g_s * (w_t - w_s)
            if name == "dc-asgd-c":
                u.add_(correction, alpha=float(hp["lambda0"]))
            else:
                m = float(hp["ms_decay"])
                self._ms.mul_(m).addcmul_(g, g, value=1.0 - m)  # MS_t = m MS + (1-m) g_s^2
                lam = float(hp["lambda0"]) / torch.sqrt(self._ms + float(hp["ms_eps"]))
                u.add_(lam * correction)
        elif name == "gap-aware":
            beta = float(hp["ema"])
            self._ms.mul_(beta).addcmul_(g, g, value=1.0 - beta)
            if staleness > 0:
                denom = torch.sqrt(self._ms / (1.0 - beta**self._mit_steps)) + float(hp["eps"])
                gap = (w - self._backup[land]).abs_()
                for group, (i0, i1, e0, e1) in zip(self.param_groups, self._group_ranges):
                    gap[e0:e1].div_(denom[e0:e1] * (staleness * group["lr"]))
                u.div_(gap.add_(1.0))  # g / (1 + G)
        elif name in ("spike-compensation", "weight-prediction"):
            beta = float(hp["beta"])
            self._mvel.mul_(beta).add_(u)  # v <- beta v + g_s
            if name == "spike-compensation":
                a_sc = beta**staleness
                b_sc = (1.0 - a_sc) / (1.0 - beta)
                u.mul_(b_sc).add_(self._mvel, alpha=a_sc)  # beta^tau v + (1-beta^tau)/(1-beta) g_s
            else:
                u.copy_(self._mvel)
        scales = [-group["lr"] * self._step_scale(group, staleness) for group in self.param_groups]
        if self._true is None:
            self._scatter_add(u, scales)
            return
        # weight prediction: w <- w - eta v on the true weights, the parameters <- w - eta k v
        tau = self._nominal_delay()
        beta = float(hp["beta"])
        k = (beta - beta ** (tau + 1.0)) / (1.0 - beta)
        for group, (i0, i1, e0, e1), alpha in zip(self.param_groups, self._group_ranges, scales):
            self._true[e0:e1].add_(u[e0:e1], alpha=alpha)
        predicted = self._scratch[0]
        predicted.copy_(self._true)
        for group, (i0, i1, e0, e1), alpha in zip(self.param_groups, self._group_ranges, scales):
            predicted[e0:e1].add_(self._mvel[e0:e1], alpha=alpha * k)
        off = 0
        for p in self._params:
            n = p.numel()
            p.copy_(predicted[off : off + n].view_as(p))
            off += n

    def true_weights(self) -> list[torch.Tensor]:
        """The server's weights w, one tensor per parameter (they differ from the parameters only
        under weight prediction, whose parameters hold the predicted point w_hat)."""
        if self._true is None:
            return [p.detach().clone() for p in self._params]
        out, off = [], 0
        for p in self._params:
            n = p.numel()
            out.append(self._true[off : off + n].view_as(p).clone())
            off += n
        return out

    # ---------------------------------------------------------------- introspection

    @property
    def steps(self) -> int:
        return self._t

    @property
    def delay(self) -> int | None:
        """The constant delay tau (round robin), else None."""
        return self.num_slots - 1 if self.schedule == "round_robin" else None

    def staleness_histogram(self) -> np.ndarray:
        """Counts of the staleness t - s of every update that landed (index k = staleness k)."""
        return np.asarray(self._hist, dtype=np.int64)

    def mean_staleness(self) -> float:
        """Mean staleness of all updates that landed so far (nan before the first step)."""
        counts = self.staleness_histogram()
        total = counts.sum()
        return float(np.dot(np.arange(counts.size), counts) / total) if total else float("nan")

    def buffer_bytes(self) -> int:
        """Bytes held by the in-flight gradient slots and the velocity buffer(s)."""
        total = self._grads.numel() * self._grads.element_size()
        if self._velocity is not None:
            total += self._velocity.numel() * self._velocity.element_size()
        for extra in (self._backup, self._ms, self._mvel, self._true, self._scratch):
            if extra is not None:
                total += extra.numel() * extra.element_size()
        return total

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self):
        """Hyperparameters per group (torch's layout) plus the in-flight updates, velocities,
        schedule position, RNG and staleness counts; ``torch.save`` it with the model."""
        groups, index = [], 0
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = list(range(index, index + len(group["params"])))
            index += len(group["params"])
            groups.append(packed)
        return {
            "state": {},
            "param_groups": groups,
            "delayed": {
                "schedule": self.schedule,
                "variant": self.variant,
                "num_slots": self.num_slots,
                "probs": self.probs,
                "grads": self._grads,
                "velocity": self._velocity,
                "stamps": list(self._stamps),
                "t": self._t,
                "free": self._free,
                "rng": self._rng.getstate(),
                "hist": list(self._hist),
                "last_staleness": self.last_staleness,
                **self._mitigation_state(),
            },
        }

    def _mitigation_state(self) -> dict:
        """The mitigation's part of the state dict (nothing without one: old checkpoints stay valid)."""
        if self.mitigation is None:
            return {}
        buffers = {"backup": self._backup, "ms": self._ms, "mvel": self._mvel, "true": self._true}
        return {"mitigation": self.mitigation, "mitigation_args": dict(self.mitigation_args),
                "mitigation_steps": self._mit_steps,
                "mitigation_buffers": {k: v for k, v in buffers.items() if v is not None}}

    def load_state_dict(self, state_dict):
        """Restore a state from ``state_dict()`` into this optimizer (same parameters and layout)."""
        delayed = state_dict.get("delayed")
        if delayed is None:
            raise ValueError("optimizer state: not a DelayedSGD state dict (no in-flight updates)")
        for key in ("schedule", "variant", "num_slots", "probs", "mitigation", "mitigation_args"):
            mine = getattr(self, key)
            theirs = delayed.get(key, {} if key == "mitigation_args" else None)
            if theirs != mine:
                raise ValueError(f"optimizer state: {key} is {theirs!r} in the state dict but {mine!r} here")
        groups = state_dict["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("optimizer state: its parameter groups do not match these parameters")
        if tuple(delayed["grads"].shape) != tuple(self._grads.shape):
            raise ValueError("optimizer state: the in-flight buffer does not match these parameters")
        for group, saved in zip(self.param_groups, groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self._grads.copy_(delayed["grads"])
        if self._velocity is not None:
            self._velocity.copy_(delayed["velocity"])
        self._stamps = list(delayed["stamps"])
        self._t = int(delayed["t"])
        self._free = int(delayed["free"])
        self._rng.setstate(_as_rng_state(delayed["rng"]))
        self._hist = list(delayed["hist"])
        self.last_staleness = delayed["last_staleness"]
        if self.mitigation is not None:
            for name, buffer in delayed["mitigation_buffers"].items():
                getattr(self, "_" + name).copy_(buffer)
            self._mit_steps = int(delayed["mitigation_steps"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the parameters' gradients (the in-flight updates are kept)."""
        for p in self._params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_()
                p.grad.zero_()


def _as_rng_state(state):
    """random.Random state from a (possibly list-converted) saved copy."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def _check_hyperparameters(lr, momentum, weight_decay) -> None:
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    if not isinstance(momentum, (int, float)) or not -1 < momentum < 1:
        raise ValueError(f"momentum must be in (-1, 1), got {momentum!r}")
    if not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
