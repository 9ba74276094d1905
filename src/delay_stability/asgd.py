"""DelayedSGD: asynchronous SGD (A-SGD) with stale gradients, as a drop-in torch optimizer, and the
one update kernel (``update``) that it, the ensemble and the parameter server share.

The delay model of Giladi et al. (ICLR 2020), eq. 2:

    w_{t+1} = w_t - eta_t * g(w_{t - tau_t}),

where g(w_s) is the (stochastic) gradient the user computed at step s. The user's loop stays
``loss.backward(); opt.step()``: at every step the gradient is taken at the *current* weights (what
a worker that has just read the weights computes) and joins a pool of in-flight updates; a
schedule decides which one lands. Two families:

**Worker-based schedules (they model real workers; use them for training experiments).** M workers
each hold one in-flight gradient (and, for shifted momentum, their own velocity); at each step one
worker lands, reads the new weights and computes its next gradient. Every gradient lands exactly
once and the mean staleness is M - 1 (in steady state, whatever the rule). All workers start from
w_0 (every slot holds g(w_0) at t = 0). The landing rules:

* ``"round_robin"`` (constant delay tau = M - 1): the workers land in turn, so the update applied at
  step t is g(w_{t-tau}) (the first tau+1 updates use g(w_0)).
* ``"random"`` (uniform; the queueing model of *Asynchrony begets Momentum*): the landing worker is
  drawn uniformly; staleness is geometric, P(tau = k) = (1/M)(1 - 1/M)^k.
* ``"gaussian"`` (the authors' rule, ``trainer.py`` ``_schedule_worker('normal')`` of
  paper-submissions/delay_stability): worker j, whose gradient has staleness s_j = t - (step it read),
  lands with probability proportional to Phi((s_j - M) / spread), spread = M/4 by default.
* ``"compute_time"``: each worker draws the time its next gradient takes (``compute_time`` =
  {law: exponential | normal | uniform, ...}) when it reads the weights; the earliest finisher lands.
  Exponential times give the uniform rule's law; nearly equal times concentrate the staleness at M - 1.
* ``"replay"``: the landing workers in the order of a real run's staleness log (``landing_order``,
  e.g. ``staleness.landing_order(path)``), cycled when training is longer than the log.

**i.i.d. delays (the model of eq. 18-19; not a model of workers).** ``schedule="iid"`` (old name
``"distribution"``, kept as an alias): tau_t is drawn independently each step from a probability
vector P(tau = k), k = 0..K, and the update applied is g(w_{t - tau_t}) from a ring of the last K+1
gradients (g(w_0) stands in for steps before 0). A gradient may land twice or never: this is the
model whose mean dynamics eq. 19 describes, and it is used where eq. 19 is being checked.

Momentum (section 2.2.2 and appendix D) as ``torch.optim.SGD`` and the authors' code keep it: the
velocity u is in gradient units and the *current* eta_t is applied at the step (d = m with
``dampening=True``, the paper's form; d = 0 without):

* ``variant="momentum"`` -- server momentum, one velocity (eq. 9 / eq. 22):
      u <- m u + (1-d) g_landed,    w <- w - eta_t u.
* ``variant="shifted"`` -- shifted momentum, one velocity per worker (eq. 10): the landing worker's
      u_j <- m u_j + (1-d) g_j,    w <- w - eta_t u_j.

At constant eta, v = -eta u turns these into eq. 9 / eq. 10 exactly (v <- m v - eta (1-d) g,
w <- w + v); with a schedule they differ: ``velocity="step"`` keeps that older form, where the
velocity carries the eta of the step that wrote it. First step: ``velocity_start="zero"`` (default)
starts every velocity at u = 0, so the first update is u = (1-d) g (eq. 9 / eq. 10 with v_0 = 0);
``velocity_start="gradient"`` is torch's convention, u = g on a velocity's first update (each
worker's own first update for shifted momentum).

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

Weight decay with a mitigation joins the landed gradient (g_s + wd w_t) before the rule; the rule's
step is applied through the same kernel (``update``, plain variant).

Memory: one flat buffer of slots x parameters for the in-flight gradients (plus one flat velocity,
or one per slot for shifted momentum, and one flat row of the weights the kernel updates); no
allocation per step. BatchNorm running statistics are not optimizer state: they are updated in the
forward pass at the current weights (the authors' code delays them too, with the model replicas).
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence

import numpy as np
import torch

from .spec import SCHEDULE_ALIASES, SCHEDULES, VELOCITY_STARTS, VELOCITY_UNITS, check_compute_time
from .spec import WORKER_SCHEDULES  # the schedules, shared with the spec
from .theory import VARIANTS  # one list of variants: plain, momentum, shifted
from .theory import check_mitigation

#: Mitigations that keep w_s, the weights each in-flight gradient was taken at (one row per slot).
_NEEDS_BACKUP = ("dc-asgd-c", "dc-asgd-a", "gap-aware")


# ================================================================ the update kernel


def _axpy(x: torch.Tensor, y: torch.Tensor, a) -> torch.Tensor:
    """x += a * y in place; ``a`` a number or a tensor broadcastable to x (one value per member)."""
    if isinstance(a, torch.Tensor):
        return x.addcmul_(y, a)
    return x.add_(y, alpha=a)


def _nonzero(a) -> bool:
    return isinstance(a, torch.Tensor) or a != 0


@torch.no_grad()
def update(w: torch.Tensor, g: torch.Tensor, u: torch.Tensor | None = None, *, lr, momentum=0.0,
           dampening=0.0, weight_decay=0.0, variant: str = "plain", velocity: str = "gradient",
           fresh=False) -> None:
    """Apply one landed gradient at the server, in place on the flat weights ``w`` (and velocity ``u``).

    With d = ``dampening`` (torch's meaning: d = m is the paper's (1-m) form, d = 0 none) and
    G = g + wd w (weight decay on the current weights):

    * plain (eq. 2):                    w <- w - eta G   (computed as w <- (1 - eta wd) w - eta g)
    * momentum / shifted, ``velocity="gradient"`` (torch.optim.SGD's form; eq. 9 / eq. 10 at
      constant eta with v = -eta u):    u <- m u + (1-d) G,   w <- w - eta u
      where ``fresh`` (a bool, or a bool tensor per member) marks a velocity's first update under
      torch's start: there u <- G.
    * momentum / shifted, ``velocity="step"`` (the velocity carries eta, eq. 9 / eq. 10 as written):
                                        v <- m v - eta (1-d) G,   w <- w + v

    ``u`` is the landing worker's velocity row (shifted) or the server's (momentum). Every
    hyperparameter is a number, or a tensor broadcastable to ``w`` (e.g. (R, 1) for R members
    stacked as (R, P): the ensemble), so one call updates a whole batch of runs.
    """
    if variant == "plain":
        if _nonzero(weight_decay):
            w.mul_(1.0 - lr * weight_decay)  # w - eta wd w
        _axpy(w, g, -lr)  # w - eta g  (eq. 2)
        return
    if u is None:
        raise ValueError(f"variant {variant!r} needs a velocity row")
    if velocity == "step":
        scale = lr * (1.0 - dampening)
        u.mul_(momentum)
        _axpy(u, g, -scale)  # m v - eta (1-d) g
        if _nonzero(weight_decay):
            _axpy(u, w, -scale * weight_decay)  # ... - eta (1-d) wd w
        w.add_(u)  # w + v  (eq. 9 / eq. 10)
        return
    if velocity != "gradient":
        raise ValueError(f"unknown velocity convention {velocity!r} (choose {', '.join(VELOCITY_UNITS)})")
    if isinstance(fresh, torch.Tensor):
        first = g.clone()
        if _nonzero(weight_decay):
            _axpy(first, w, weight_decay)
    if fresh is True:
        u.copy_(g)  # torch's first step: u = G
        if _nonzero(weight_decay):
            _axpy(u, w, weight_decay)
    else:
        u.mul_(momentum)
        _axpy(u, g, 1.0 - dampening)  # m u + (1-d) g
        if _nonzero(weight_decay):
            _axpy(u, w, (1.0 - dampening) * weight_decay)  # ... + (1-d) wd w
        if isinstance(fresh, torch.Tensor):
            u.copy_(torch.where(fresh, first, u))
    _axpy(w, u, -lr)  # w - eta_t u


def velocity_rows(variant: str, workers: int) -> int:
    """Velocity rows of a variant: none (plain), one (server momentum), one per worker (shifted)."""
    return {"plain": 0, "momentum": 1, "shifted": workers}[variant]


def optimizer_state(*, param_groups: list[dict], schedule: str, variant: str, num_slots: int, grads,
                    velocity, stamps, t: int, free: int, rng_state, hist, last_staleness,
                    probs=None, velocity_units: str = "gradient", velocity_start: str = "zero",
                    fresh=None, schedule_state: dict | None = None, extra: dict | None = None) -> dict:
    """The state dict of a ``DelayedSGD`` (its one layout; the ensemble builds its members' with it).

    ``param_groups``: torch's layout (hyperparameters and parameter indices per group); ``grads``: the
    (slots, P) in-flight gradients; ``velocity``: (rows, P) or None; ``stamps``: the step whose
    weights each slot's gradient was taken at; ``free``: the slot that takes the next gradient;
    ``rng_state``: ``random.Random.getstate()`` of the schedule; ``hist``: staleness counts;
    ``fresh``: per velocity row, whether it was never written (torch's start); ``schedule_state``:
    what a landing rule keeps between steps (compute times: the workers' finish times).
    """
    rows = 0 if velocity is None else int(velocity.shape[0])
    return {
        "state": {},
        "param_groups": param_groups,
        "delayed": {
            "schedule": schedule,
            "variant": variant,
            "num_slots": num_slots,
            "probs": probs,
            "velocity_units": velocity_units,
            "velocity_start": velocity_start,
            "grads": grads,
            "velocity": velocity,
            "fresh": list(fresh) if fresh is not None else [True] * rows,
            "stamps": list(stamps),
            "t": int(t),
            "free": int(free),
            "rng": rng_state,
            "hist": list(hist),
            "last_staleness": last_staleness,
            "schedule_state": dict(schedule_state or {}),
            **(extra or {}),
        },
    }


#: The entries of ``optimizer_state``'s "delayed" dict whose size grows with the parameters: the
#: (slots x P) in-flight gradients, the (rows x P) velocities and a mitigation's P-sized buffers.
IN_FLIGHT = ("grads", "velocity", "mitigation_buffers")


def without_in_flight(state: dict) -> dict:
    """``state`` (``optimizer_state``'s layout) without the buffers listed in ``IN_FLIGHT``, marked
    ``delayed["in_flight"] = "dropped"``: the state a finished run keeps in final.pt. Its schedule
    position, RNG and staleness counts stay, so a summary read back from it is exact; the run cannot
    take more steps from it (``DelayedSGD.load_state_dict`` loads it, ``step`` then refuses). With
    tau + 1 in-flight copies of P weights this is what makes final.pt of a tau = 32 run about
    34 times smaller than its checkpoint.pt."""
    delayed = dict(state["delayed"], grads=None, velocity=None, in_flight="dropped")
    if "mitigation_buffers" in delayed:
        delayed["mitigation_buffers"] = {}
    return dict(state, delayed=delayed)


def has_in_flight(state: dict) -> bool:
    """Whether an optimizer state dict still holds its in-flight buffers (not ``without_in_flight``)."""
    return state["delayed"].get("in_flight") != "dropped"


# ================================================================ landing rules of worker schedules


def gaussian_landing_probabilities(staleness, workers: int, spread: float | None = None) -> np.ndarray:
    """P(worker j lands) proportional to Phi((s_j - M) / spread), s_j its gradient's staleness,
    spread = M/4 by default: the authors' rule (``trainer.py``, ``_schedule_worker('normal')``)."""
    s = np.asarray(staleness, dtype=np.float64)
    spread = workers / 4.0 if spread is None else float(spread)
    z = (s - workers) / spread
    phi = np.array([0.5 * math.erfc(-x / math.sqrt(2.0)) for x in z])
    total = phi.sum()
    if not total > 0:  # every Phi underflowed (cannot happen for spread >= M/40): the stalest lands
        phi = (s == s.max()).astype(np.float64)
        total = phi.sum()
    return phi / total


def draw_index(probs, u: float) -> int:
    """Index k with cumulative probability first exceeding u in [0, 1)."""
    cdf = np.cumsum(probs)
    return min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(probs) - 1)


def draw_compute_time(law: dict, rng: random.Random) -> float:
    """One compute time from the law (normal: redrawn until positive)."""
    if law["law"] == "exponential":
        return rng.expovariate(1.0 / law["mean"])
    if law["law"] == "uniform":
        return rng.uniform(law["low"], law["high"])
    while True:
        x = rng.gauss(law["mean"], law["std"])
        if x > 0:
            return x


def as_probabilities(delay) -> list[float]:
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
        delay: constant delay tau >= 0 (round robin; M = tau + 1 workers for the other worker
            schedules); or, with ``schedule="iid"``, a 1-D sequence of probabilities P(tau = k),
            k = 0..K (a sequence implies that schedule).
        workers: number of workers M of a worker schedule (default delay + 1).
        schedule: a worker schedule (``"round_robin"``, ``"random"``, ``"gaussian"``,
            ``"compute_time"``, ``"replay"``) or the i.i.d. delays of eq. 18 (``"iid"``, alias
            ``"distribution"``); see the module doc.
        momentum: m in (-1, 1); needs ``variant="momentum"`` or ``"shifted"`` when non-zero.
        variant: ``"plain"``, ``"momentum"`` (server momentum, eq. 9) or ``"shifted"`` (eq. 10).
        dampening: multiply the gradient by (1 - m) in the velocity update (the paper's form).
        weight_decay: L2 coefficient, applied at the server on the current weights.
        seed: seed of the schedule's random draws.
        mitigation: None (plain delayed SGD) or one of ``theory.MITIGATIONS`` (see the module doc).
        mitigation_args: that rule's hyperparameters (defaults ``theory.MITIGATION_DEFAULTS``).
        spread: the Gaussian rule's spread s (default M/4).
        compute_time: the compute-time law of ``schedule="compute_time"`` (``check_compute_time``).
        landing_order: the landing workers (0..M-1), in order, of ``schedule="replay"``.
        velocity: ``"gradient"`` (torch's units, the current eta applied at the step; default) or
            ``"step"`` (the velocity carries eta, the older form; equal at constant eta).
        velocity_start: ``"zero"`` (u_0 = 0; default) or ``"gradient"`` (torch's u = g on a
            velocity's first update).

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
        spread: float | None = None,
        compute_time: dict | None = None,
        landing_order: Sequence[int] | None = None,
        velocity: str = "gradient",
        velocity_start: str = "zero",
    ):
        if isinstance(delay, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(delay, str):
            if schedule == "round_robin":
                schedule = "iid"
        schedule = SCHEDULE_ALIASES.get(schedule, schedule)
        _check_hyperparameters(lr, momentum, weight_decay)
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r} (choose {', '.join(VARIANTS)})")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r} (choose {', '.join(SCHEDULES)})")
        if variant == "plain" and momentum != 0:
            raise ValueError(f"momentum={momentum} needs variant='momentum' or variant='shifted'")
        if velocity not in VELOCITY_UNITS:
            raise ValueError(f"unknown velocity {velocity!r} (choose {', '.join(VELOCITY_UNITS)})")
        if velocity_start not in VELOCITY_STARTS:
            raise ValueError(f"unknown velocity_start {velocity_start!r} (choose {', '.join(VELOCITY_STARTS)})")
        if velocity == "step" and velocity_start != "zero":
            raise ValueError("velocity='step' starts from zero velocity (velocity_start='zero')")

        self.schedule = schedule
        self.variant = variant
        self.velocity_units, self.velocity_start = velocity, velocity_start
        self._check_schedule_args(spread, compute_time, landing_order)
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
        if self.landing_order is not None and max(self.landing_order) >= self.num_slots:
            raise ValueError(f"landing_order names worker {max(self.landing_order)} but there are "
                             f"{self.num_slots} workers (0..{self.num_slots - 1})")
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
        self.last_worker: int | None = None
        rows = 0 if self._velocity is None else self._velocity.shape[0]
        self._fresh = [True] * rows  # velocity rows never written (torch's start: u = g there)
        self._finish: list[float] = []  # compute_time: each worker's finish time
        if self.schedule == "compute_time":
            self._finish = [draw_compute_time(self.compute_time, self._rng) for _ in range(self.num_slots)]
        self._frozen = True

    def _check_schedule_args(self, spread, compute_time, landing_order) -> None:
        """The landing rule's own arguments: each only with its schedule."""
        self.spread = self.compute_time = self.landing_order = None
        given = {"spread": spread, "compute_time": compute_time, "landing_order": landing_order}
        owner = {"spread": "gaussian", "compute_time": "compute_time", "landing_order": "replay"}
        for name, value in given.items():
            if value is not None and self.schedule != owner[name]:
                raise ValueError(f"{name} is only used with schedule={owner[name]!r}, not {self.schedule!r}")
        if spread is not None:
            if isinstance(spread, bool) or not isinstance(spread, (int, float)) or not spread > 0:
                raise ValueError(f"spread must be a number > 0, got {spread!r}")
            self.spread = float(spread)
        if self.schedule == "compute_time":
            self.compute_time = check_compute_time(compute_time if compute_time is not None
                                                   else {"law": "exponential"})
        if self.schedule == "replay":
            if landing_order is None or len(landing_order) == 0:
                raise ValueError("schedule='replay' needs landing_order, the landing workers in order")
            self.landing_order = [_check_int("landing_order", k, 0) for k in landing_order]

    # ---------------------------------------------------------------- set-up

    def _slots_for_schedule(self, delay, workers) -> int:
        """Number of in-flight slots: M = tau + 1 workers (worker schedules), K+1 (iid)."""
        if self.schedule == "iid":
            if workers is not None:
                raise ValueError("workers is not used with schedule='iid' (give delay probabilities)")
            if isinstance(delay, (int, np.integer)) and not isinstance(delay, bool):
                raise ValueError("schedule='iid' needs delay as a probability vector P(tau=k), k=0..K")
            self.probs = as_probabilities(delay)
            return len(self.probs)
        tau = _check_int("delay", delay, 0)
        if workers is not None:
            workers = _check_int("workers", workers, 1)
        if workers is None:
            return tau + 1
        if tau not in (0, workers - 1):
            raise ValueError(f"delay={tau} and workers={workers} disagree (M workers: mean staleness is "
                             f"workers-1; round robin: workers = delay + 1)")
        return workers

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
        rows = velocity_rows(self.variant, self.num_slots)
        self._velocity = torch.zeros(rows, numel, **kw) if rows else None
        self._w = torch.zeros(numel, **kw)  # the weights as one flat row, for the kernel
        self._ended = False  # True once loaded from a finished run's state (without_in_flight)

        self._group_ranges = []  # (first param index, last+1, first element, last+1) per group
        offsets, i, off = [], 0, 0
        for group in self.param_groups:
            i0, off0 = i, off
            for p in group["params"]:
                offsets.append((off, p.numel()))
                off += p.numel()
                i += 1
            self._group_ranges.append((i0, i, off0, off))
        self._offsets = offsets
        self._grad_views = [self._views(self._grads[s], offsets) for s in range(self.num_slots)]
        self._w_views = self._views(self._w, offsets)

    def _views(self, row: torch.Tensor, offsets) -> list[torch.Tensor]:
        return [row[o : o + n].view_as(p) for (o, n), p in zip(offsets, self._params)]

    # ---------------------------------------------------------------- the step

    @torch.no_grad()
    def step(self, closure=None):
        """Store the fresh gradient g(w_t), then apply the update the schedule lands (eq. 2/9/10)."""
        if self._ended:
            raise RuntimeError("DelayedSGD: this state was loaded from the end of a finished run (final.pt), which "
                               "keeps no in-flight updates; resume from checkpoint.pt, or start a new run from these "
                               "weights (init_checkpoint)")
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
        self.last_worker = land  # the slot (worker) whose gradient landed
        self._record(staleness)
        if self.mitigation is None:
            self._apply(land, velocity_read, velocity_write)
        else:
            self._apply_mitigation(land, staleness)
        self._free = land
        self._t = t + 1
        return loss

    def _write_slot(self, t: int) -> int:
        """Round robin and iid: a ring indexed by t; the other worker schedules: the worker that just
        landed (round robin's ring is that too: the slot that landed at t-1 is t mod M)."""
        return t % self.num_slots if self.schedule in ("round_robin", "iid") else self._free

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
        if self.schedule == "gaussian":
            staleness = [t - s for s in self._stamps]
            land = draw_index(gaussian_landing_probabilities(staleness, K, self.spread), self._rng.random())
            return land, land, land
        if self.schedule == "compute_time":
            land = min(range(K), key=self._finish.__getitem__)  # the earliest finisher
            self._finish[land] += draw_compute_time(self.compute_time, self._rng)  # its next gradient's time
            return land, land, land
        if self.schedule == "replay":
            land = self.landing_order[t % len(self.landing_order)]
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
        """The landing slot's update through the kernel (``update``), group by group, on the flat
        weights (gathered from the parameters and written back)."""
        torch._foreach_copy_(self._w_views, self._params)
        if self._velocity is not None and v_read != v_write:  # iid ring: v_{t+1} from v_{t-tau}
            self._velocity[v_write].copy_(self._velocity[v_read])
            self._fresh[v_write] = self._fresh[v_read]
        fresh = bool(self._fresh[v_write]) and self.velocity_start == "gradient" if self._fresh else False
        for group, (i0, i1, e0, e1) in zip(self.param_groups, self._group_ranges):
            if i0 == i1:
                continue
            m = group["momentum"]
            update(self._w[e0:e1], self._grads[land, e0:e1],
                   None if self._velocity is None else self._velocity[v_write, e0:e1],
                   lr=group["lr"], momentum=m, dampening=m if group["dampening"] else 0.0,
                   weight_decay=group["weight_decay"], variant=self.variant, velocity=self.velocity_units,
                   fresh=fresh)
        if self._fresh:
            self._fresh[v_write] = False
        torch._foreach_copy_(self._params, self._w_views)

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
        if self._true is None:  # the rule's step through the kernel: w <- w - eta_t u
            for (i0, i1, e0, e1), alpha in zip(self._group_ranges, scales):
                update(w[e0:e1], u[e0:e1], lr=-alpha)
            torch._foreach_copy_(self._params, self._views(w, self._offsets))
            return
        # weight prediction: w <- w - eta v on the true weights, the parameters <- w - eta k v
        tau = self._nominal_delay()
        beta = float(hp["beta"])
        k = (beta - beta ** (tau + 1.0)) / (1.0 - beta)
        for group, (i0, i1, e0, e1), alpha in zip(self.param_groups, self._group_ranges, scales):
            update(self._true[e0:e1], u[e0:e1], lr=-alpha)
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
        """Bytes held by the in-flight gradient slots, the velocity buffer(s) and the flat weight row."""
        total = (self._grads.numel() + self._w.numel()) * self._grads.element_size()
        if self._velocity is not None:
            total += self._velocity.numel() * self._velocity.element_size()
        for extra in (self._backup, self._ms, self._mvel, self._true, self._scratch):
            if extra is not None:
                total += extra.numel() * extra.element_size()
        return total

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self):
        """Hyperparameters per group (torch's layout) plus the in-flight updates, velocities (and
        their units), schedule position, RNG and staleness counts (``optimizer_state``'s layout);
        ``torch.save`` it with the model."""
        groups, index = [], 0
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = list(range(index, index + len(group["params"])))
            index += len(group["params"])
            groups.append(packed)
        schedule_state = {"finish": list(self._finish)} if self.schedule == "compute_time" else {}
        extra = {"spread": self.spread, "compute_time": self.compute_time, "landing_order": self.landing_order,
                 **self._mitigation_state()}
        return optimizer_state(
            param_groups=groups, schedule=self.schedule, variant=self.variant, num_slots=self.num_slots,
            probs=self.probs, grads=self._grads, velocity=self._velocity, stamps=self._stamps, t=self._t,
            free=self._free, rng_state=self._rng.getstate(), hist=self._hist,
            last_staleness=self.last_staleness, velocity_units=self.velocity_units,
            velocity_start=self.velocity_start, fresh=self._fresh, schedule_state=schedule_state, extra=extra)

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
        delayed = dict(delayed, schedule=SCHEDULE_ALIASES.get(delayed["schedule"], delayed["schedule"]))
        for key in ("schedule", "variant", "num_slots", "probs", "mitigation", "mitigation_args",
                    "spread", "compute_time", "landing_order"):
            mine = getattr(self, key)
            theirs = delayed.get(key, {} if key == "mitigation_args" else None)
            if theirs != mine:
                raise ValueError(f"optimizer state: {key} is {theirs!r} in the state dict but {mine!r} here")
        if self._velocity is not None:  # a state without units predates them: its velocities carry eta
            units = delayed.get("velocity_units", "step")
            start = delayed.get("velocity_start", "zero")
            if (units, start) != (self.velocity_units, self.velocity_start):
                raise ValueError(f"optimizer state: its velocities are velocity={units!r}, velocity_start={start!r} "
                                 f"but this optimizer has velocity={self.velocity_units!r}, velocity_start="
                                 f"{self.velocity_start!r} (an older checkpoint keeps velocities in step units: "
                                 "load it with velocity='step')")
        groups = state_dict["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("optimizer state: its parameter groups do not match these parameters")
        dropped = not has_in_flight(state_dict)
        if not dropped and tuple(delayed["grads"].shape) != tuple(self._grads.shape):
            raise ValueError("optimizer state: the in-flight buffer does not match these parameters")
        for group, saved in zip(self.param_groups, groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self._ended = dropped  # a finished run's state (final.pt): no in-flight updates to go on with
        if dropped:
            self._grads.zero_()
            if self._velocity is not None:
                self._velocity.zero_()
        else:
            self._grads.copy_(delayed["grads"])
            if self._velocity is not None:
                self._velocity.copy_(delayed["velocity"])
        self._stamps = list(delayed["stamps"])
        self._t = int(delayed["t"])
        self._free = int(delayed["free"])
        self._rng.setstate(_as_rng_state(delayed["rng"]))
        self._hist = list(delayed["hist"])
        self.last_staleness = delayed["last_staleness"]
        rows = 0 if self._velocity is None else self._velocity.shape[0]
        self._fresh = [bool(f) for f in delayed.get("fresh", [False] * rows)]
        self._finish = [float(x) for x in delayed.get("schedule_state", {}).get("finish", self._finish)]
        if self.mitigation is not None:
            for name, buffer in delayed["mitigation_buffers"].items():  # none in a finished run's state
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
