"""A real parameter server on ``torch.distributed``: real asynchronous workers and their staleness.

Everything else in the package simulates delay inside one process (``DelayedSGD``). Here one server
process (rank 0) holds the weights and M worker processes (ranks 1..M) each pull the weights,
compute a gradient and push it; the server applies every gradient as it arrives (gloo point-to-point
messages; the server receives from any source):

    w_{t+1} = w_t − η g(w_{t − τ_t}),       τ_t = t − (version the worker pulled)        (eq. 2)

with ``variant="momentum"`` (one server velocity, eq. 9) or ``variant="shifted"`` (one velocity per
worker, eq. 10), applied by ``asgd.update`` (the kernel DelayedSGD uses): with ``velocity:
gradient`` (default, torch's units) u ← m u + (1−m) g, w ← w − η u; with ``velocity: step`` (the
older form) v ← m v − η(1−m) g, w ← w + v (the same dynamics at a phase's constant η). The
version counter t is the number of updates applied; τ_t is the update's *real* staleness. Every
update is logged (``staleness.csv``: update, worker, step, pulled, staleness, time); its histogram
p̂_k = #{τ_t = k}/T is a measured delay distribution whose stability edge is eq. 19,
``theory.critical_alpha(p̂)``. A homogeneous worker pool whose compute times are memoryless
(exponential ``jitter``) is the queueing model of *Asynchrony begets Momentum*: the next update comes
from a uniformly random worker, so P(τ = k) = (1/M)(1 − 1/M)^k, mean M − 1; equal fixed compute
times give round robin, τ = M − 1 exactly.

A run is a list of *phases* (one torchrun launch serves them all: torch starts once per process).
Each phase starts from the run's initial weights with zero velocities and version 0, and has a
fixed ``lr`` or a ``factor`` of the edge predicted from the staleness measured in an earlier phase
(``edge_from``): η = factor · α*(p̂, m)/a, where a is the sharpness at the start (eq. 19; eq. 26
averaged over p̂ for server momentum). A phase stops after ``updates`` updates, or when the full-batch
training loss leaves (above ``stop.above`` or not finite: "left") or settles (below ``stop.below``
for ``stop.window`` evaluations in a row: "stayed").

Launch (never a home-made launcher)::

    torchrun --standalone --nproc-per-node $((M+1)) --max-restarts 2 \\
        -m delay_stability.cli parameter-server --config run.json --out DIR

and across nodes one ``torchrun`` per node under ``srun`` (README, "Real workers").

Faults. A worker that falls silent for ``worker_timeout`` seconds (killed, its node lost) is
recorded as lost (``summary.json``: rank, phase, update, its last update) and the server goes on
with the others; a message from it later revives it. (This needs the lost worker under another
torchrun agent, as on another node: one agent that sees a child die restarts its whole group.) The server writes ``checkpoint.pt`` (weights, server velocity,
per-worker velocities, version counter, per-worker step counters, the log so far, finished
phases) every ``checkpoint_every`` updates and at every phase end, atomically; a restarted run
(``torchrun --max-restarts``, or a new launch on the same ``--out``) resumes from it. Timeouts
everywhere: every message waits at most ``timeout`` seconds (the process group's timeout) and a
run at most ``time_limit`` seconds, so nothing can hang.

Minibatches: with ``batch_size`` > 0 in the spec, the worker's batch is a function of
(seed, worker, step), the step being the server's count of that worker's updates, so the log
replays exactly (``replay``).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import random
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from . import theory
from .asgd import update
from .spec import VELOCITY_UNITS
from .errors import UserError
from .files import write_csv, write_json
from .staleness import HISTOGRAM_COLUMNS, STALENESS_COLUMNS, histogram

#: Run configuration keys and their defaults (``check_config`` fills them in).
DEFAULTS = {
    "init_checkpoint": None,     # a package checkpoint ({"spec", "model"}): weights, model, data, loss
    "sharpness": None,           # a = λmax(H) at the start (needed by phases with a factor)
    "variant": "plain",          # plain | momentum | shifted
    "momentum": 0.0,
    "velocity": "gradient",      # gradient (u in gradient units, torch) | step (v carries η): asgd.update
    "jitter": 0.0,               # mean of an exponential pause (s) after every gradient; 0: none
    "jitter_scales": None,       # per-worker multipliers of jitter (heterogeneous workers)
    "phases": [],                # [{name, lr | factor, updates, stop: {above, below, window}, jitter}]
    "edge_from": None,           # the phase whose staleness predicts the edge (default: the first)
    "eval_every": 10,            # updates between full-batch loss evaluations at the server
    "checkpoint_every": 200,     # updates between checkpoints
    "timeout": 60.0,             # seconds any one message may take (process-group timeout)
    "worker_timeout": 20.0,      # a worker silent this long is recorded as lost
    "time_limit": 600.0,         # seconds the whole run may take
    "seed": 0,
    "device": "cpu",             # cpu | cuda | auto: each process computes there (one GPU per local rank)
    "fail": None,                # fault injection for tests: {"rank": r, "after_steps": n, "how": "exit"}
}
CMD_STOP, CMD_GRAD = 0.0, 1.0
HEADER = 4  # server -> worker: [cmd, phase, version, step]; worker -> server: [phase, version, step, 0]


# ------------------------------------------------------------------------------------------------
# 1. Configuration
# ------------------------------------------------------------------------------------------------


def check_config(cfg: dict, where: str = "run config") -> dict:
    """The run configuration with defaults filled in; UserError naming the key otherwise."""
    if not isinstance(cfg, dict):
        raise UserError(f"{where}: expected a JSON object")
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}")
    cfg = {**DEFAULTS, **cfg}
    if not cfg["init_checkpoint"]:
        raise UserError(f"{where}: init_checkpoint is required")
    if cfg["variant"] not in theory.VARIANTS:
        raise UserError(f"{where}: variant must be one of {', '.join(theory.VARIANTS)}")
    try:
        m = theory.check_momentum(cfg["momentum"])
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None
    if cfg["variant"] == "plain" and m != 0:
        raise UserError(f"{where}: momentum {m:g} needs variant momentum or shifted")
    if cfg["velocity"] not in VELOCITY_UNITS:
        raise UserError(f"{where}: velocity must be one of {', '.join(VELOCITY_UNITS)}")
    if cfg["device"] not in ("cpu", "cuda", "auto"):
        raise UserError(f"{where}: device must be cpu, cuda or auto")
    for key in ("jitter",):
        if not isinstance(cfg[key], (int, float)) or cfg[key] < 0:
            raise UserError(f"{where}: {key} must be a number >= 0")
    for key in ("timeout", "worker_timeout", "time_limit"):
        if not isinstance(cfg[key], (int, float)) or cfg[key] <= 0:
            raise UserError(f"{where}: {key} must be a positive number of seconds")
    for key in ("eval_every", "checkpoint_every"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise UserError(f"{where}: {key} must be an integer >= 1")
    phases = cfg["phases"]
    if not isinstance(phases, list) or not phases:
        raise UserError(f"{where}: phases must be a non-empty list")
    names = [p.get("name") if isinstance(p, dict) else None for p in phases]
    if any(not isinstance(n, str) or not n or "/" in n for n in names) or len(set(names)) != len(names):
        raise UserError(f"{where}: every phase needs a distinct name (no '/')")
    cfg["edge_from"] = cfg["edge_from"] or names[0]
    if cfg["edge_from"] not in names:
        raise UserError(f"{where}: edge_from {cfg['edge_from']!r} is not a phase")
    for i, p in enumerate(phases):
        if ("lr" in p) == ("factor" in p):
            raise UserError(f"{where}: phase {p['name']!r} needs exactly one of lr, factor")
        if "factor" in p:
            if names.index(cfg["edge_from"]) >= i:
                raise UserError(f"{where}: phase {p['name']!r} has a factor but comes before edge_from")
            if cfg["variant"] == "shifted":
                raise UserError(f"{where}: a factor needs variant plain or momentum (eq. 19 has no "
                                "shifted-momentum form for a delay distribution)")
            if not isinstance(cfg["sharpness"], (int, float)) or not cfg["sharpness"] > 0:
                raise UserError(f"{where}: phases with a factor need sharpness > 0")
        value = p.get("lr", p.get("factor"))
        if not isinstance(value, (int, float)) or not value > 0:
            raise UserError(f"{where}: phase {p['name']!r}: lr/factor must be a positive number")
        if not isinstance(p.get("jitter", 0.0), (int, float)) or p.get("jitter", 0.0) < 0:
            raise UserError(f"{where}: phase {p['name']!r}: jitter must be a number >= 0")
        if not isinstance(p.get("updates"), int) or p["updates"] < 1:
            raise UserError(f"{where}: phase {p['name']!r}: updates must be an integer >= 1")
    return cfg


# ------------------------------------------------------------------------------------------------
# 2. The update rule, the problem's gradient and the replay of a log
# ------------------------------------------------------------------------------------------------


def apply_update(state: dict, grad: torch.Tensor, worker: int, lr: float, variant: str, m: float,
                 velocity: str = "gradient") -> None:
    """Apply one pushed gradient at the server, in place on ``state`` = {"w", "v", "vs"}, through
    ``asgd.update`` (dampening d = m, velocities starting at zero):

    plain:     w ← w − η g                                                    (eq. 2)
    momentum:  u ← m u + (1−m) g,     w ← w − η u       (server momentum, eq. 9)
    shifted:   u_j ← m u_j + (1−m) g, w ← w − η u_j    (one velocity per worker j, eq. 10)

    (``velocity="step"``: v ← m v − η(1−m) g, w ← w + v, the same at constant η with v = −η u.)
    """
    w = state["w"]
    if variant == "plain":
        u = None
    elif variant == "momentum":
        u = state["v"]
    else:
        u = state["vs"].setdefault(int(worker), torch.zeros_like(w))
    update(w, grad, u, lr=lr, momentum=m, dampening=m, variant=variant, velocity=velocity)


def process_device(name: str) -> torch.device:
    """This process's device: the CPU, or (cuda; auto where there are GPUs) GPU LOCAL_RANK mod #GPUs."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("device cuda: no GPU is visible to this process")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())


class Problem:
    """The model, loss and training set of a run, with the gradient and loss as functions of a flat
    weight vector: g(w) = ∇L_B(w) for the batch B of (seed, worker, step) (the full set when the
    spec's batch_size is 0)."""

    def __init__(self, checkpoint: str, seed: int = 0, device: str = "cpu"):
        from . import train

        run = train.load_run(checkpoint, process_device(device))
        self.model, self.spec, self.loss_fn, self.device = run.model, run.spec, run.loss_fn, run.device
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.full = run.batches(0)
        self.x, self.y = self.full[0]
        self.batch_size = int(self.spec["batch_size"])
        self.seed = int(seed)
        self.dtype = self.params[0].dtype
        self.w0 = self.flat().to("cpu", torch.float64)  # messages and the server's state: float64 on the CPU

    def flat(self) -> torch.Tensor:
        return torch.nn.utils.parameters_to_vector(self.params).detach()

    def load(self, w: torch.Tensor) -> None:
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(w.to(self.device, self.dtype), self.params)

    def batch(self, worker: int, step: int):
        if self.batch_size <= 0 or self.batch_size >= len(self.y):
            return self.full
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(worker) * 7_919 + int(step))
        pick = torch.randperm(len(self.y), generator=g)[: self.batch_size].to(self.x.device)
        return [(self.x[pick], self.y[pick])]

    def grad(self, w: torch.Tensor, worker: int, step: int) -> torch.Tensor:
        from .train import mean_loss_and_grad

        self.load(w)
        _, grads = mean_loss_and_grad(self.model, self.loss_fn, self.batch(worker, step), self.params)
        return torch.cat([g.reshape(-1) for g in grads]).to("cpu", torch.float64)

    def loss(self, w: torch.Tensor) -> float:
        from .train import mean_loss

        if not bool(torch.isfinite(w).all()):
            return math.nan
        self.load(w)
        return mean_loss(self.model, self.loss_fn, self.full)


def replay(problem: Problem, rows: list[dict], lr: float, variant: str = "plain", momentum: float = 0.0,
           w0: torch.Tensor | None = None, velocity: str = "gradient") -> torch.Tensor:
    """The weights after applying the logged updates one after another in one process:
    update t is g(w_{pulled_t}) of worker ``worker`` at its ``step`` (``apply_update``). Equal to
    the server's final weights (to float tolerance) iff every pushed gradient was applied once, at
    its logged staleness."""
    state = {"w": (problem.w0 if w0 is None else w0).to(torch.float64).clone(), "v": None, "vs": {}}
    state["v"] = torch.zeros_like(state["w"])
    history = {0: state["w"].clone()}
    for t, row in enumerate(rows):
        if int(row["update"]) != t or int(row["pulled"]) > t:
            raise ValueError(f"log row {t} is out of order: {row}")
        g = problem.grad(history[int(row["pulled"])], int(row["worker"]), int(row["step"]))
        apply_update(state, g, int(row["worker"]), lr, variant, momentum, velocity)
        history[t + 1] = state["w"].clone()
    return state["w"]


# ------------------------------------------------------------------------------------------------
# 3. Staleness logs and their histogram (eq. 19's p̂)
# ------------------------------------------------------------------------------------------------


def write_phase_files(folder: Path, rows: list[dict], summary: dict) -> None:
    """``staleness.csv``, ``histogram.csv`` and ``summary.json`` of one phase (atomically)."""
    write_csv(folder / "staleness.csv", STALENESS_COLUMNS, rows)
    if rows:
        p = histogram(r["staleness"] for r in rows)
        counts = np.bincount([r["staleness"] for r in rows])
        write_csv(folder / "histogram.csv", HISTOGRAM_COLUMNS,
                  [{"staleness": k, "count": int(c), "probability": float(q)}
                   for k, (c, q) in enumerate(zip(counts, p))])
    write_json(folder / "summary.json", summary)


def predicted_edge(staleness, sharpness: float, variant: str, momentum: float) -> dict:
    """α*(p̂) (eq. 19; eq. 26 averaged over p̂ with server momentum) and η* = α*/a."""
    p = histogram(staleness)
    alpha = theory.critical_alpha(p, momentum, variant)
    return {"alpha_star": alpha, "predicted_lr": alpha / float(sharpness),
            "mean_staleness": float(np.dot(np.arange(p.size), p))}


# ------------------------------------------------------------------------------------------------
# 4. The server (rank 0)
# ------------------------------------------------------------------------------------------------


def _config_key(cfg: dict) -> str:
    """What a checkpoint must match to be resumed: the run configuration without its fault injection,
    and the code of this module and of what it imports (edited code computes afresh)."""
    from .files import code_hash

    code = code_hash(["delay_stability.server"], Path(__file__).resolve().parents[1])
    return json.dumps({"config": {k: v for k, v in cfg.items() if k != "fail"}, "code": code}, sort_keys=True)


class Server:
    """Rank 0: receives pushes from any worker, applies them, logs them and replies with the weights."""

    def __init__(self, cfg: dict, out: Path, problem: Problem, workers: int):
        self.cfg, self.out, self.problem = cfg, Path(out), problem
        self.workers = list(range(1, workers + 1))
        self.n = problem.w0.numel()
        self.inbox = torch.zeros(HEADER + self.n, dtype=torch.float64)
        self.t_start = time.monotonic()
        self.ckpt_path = self.out / "checkpoint.pt"
        self.done, self.edge, self.lost_log, self.last_update = {}, None, [], {}
        self.restarts = 0
        self._fresh_phase(0)
        if self.ckpt_path.exists():
            self._resume()

    # -- state
    def _fresh_phase(self, index):
        self.phase = index
        w = self.problem.w0.to(torch.float64).clone()
        self.state = {"w": w, "v": torch.zeros_like(w), "vs": {}}
        self.version, self.rows, self.steps = 0, [], {}
        self.losses, self.below_run, self.outcome, self.reason = [], 0, None, None
        self.phase_t0 = time.monotonic()
        self.time_offset = 0.0
        self.resumed_at = None

    def _checkpoint(self):
        from .train import save_checkpoint

        save_checkpoint(str(self.ckpt_path), {
            "server": {"phase": self.phase, "version": self.version, "w": self.state["w"],
                       "v": self.state["v"], "vs": {str(k): v for k, v in self.state["vs"].items()},
                       "steps": {str(k): v for k, v in self.steps.items()}, "rows": json.dumps(self.rows),
                       "losses": json.dumps(self.losses), "done": json.dumps(self.done),
                       "edge": json.dumps(self.edge), "lost": json.dumps(self.lost_log),
                       "restarts": self.restarts, "config": _config_key(self.cfg),
                       "velocity": self.cfg["velocity"],
                       "elapsed": time.monotonic() - self.phase_t0 + self.time_offset}})

    def _resume(self):
        from .train import load_checkpoint

        s = load_checkpoint(str(self.ckpt_path))["server"]
        if s.get("config") != _config_key(self.cfg):
            print(f"server: {self.ckpt_path} belongs to another run configuration; starting afresh", flush=True)
            return
        units = s.get("velocity", "step")  # a checkpoint without units predates them: v carries η
        if units != self.cfg["velocity"]:
            raise UserError(f"server: {self.ckpt_path} keeps velocities in {units!r} units but the run config "
                            f"says velocity {self.cfg['velocity']!r}; remove the checkpoint or set velocity")
        self._fresh_phase(int(s["phase"]))
        self.version = int(s["version"])
        self.state = {"w": s["w"].clone(), "v": s["v"].clone(), "vs": {int(k): v.clone() for k, v in s["vs"].items()}}
        self.steps = {int(k): int(v) for k, v in s["steps"].items()}
        self.rows, self.losses = json.loads(s["rows"]), json.loads(s["losses"])
        self.done, self.edge, self.lost_log = json.loads(s["done"]), json.loads(s["edge"]), json.loads(s["lost"])
        self.restarts = int(s["restarts"]) + (int(s["phase"]) < len(self.cfg["phases"]))  # a finished run: no restart
        self.time_offset = float(s["elapsed"])
        self.resumed_at = {"phase": self.phase, "version": self.version}
        print(f"server: resumed phase {self.phase} at update {self.version} from {self.ckpt_path}", flush=True)

    # -- messages
    def _send(self, worker, cmd):
        header = torch.tensor([cmd, float(self.phase), float(self.version), float(self.steps.get(worker, 0))],
                              dtype=torch.float64)
        import torch.distributed as dist

        dist.send(torch.cat([header, self.state["w"]]), dst=worker)

    def _phase_spec(self):
        return self.cfg["phases"][self.phase]

    def _lr(self):
        p = self._phase_spec()
        if "lr" in p:
            return float(p["lr"])
        return float(p["factor"]) * self.edge["predicted_lr"]

    # -- the loop
    def run(self):
        import torch.distributed as dist

        last_seen = {w: time.monotonic() for w in self.workers}
        alive = set(self.workers)
        for w in self.workers:  # every worker starts with the current weights
            self._send(w, CMD_GRAD)
        while self.phase < len(self.cfg["phases"]):
            spec = self._phase_spec()
            lr = self._lr()
            stop = spec.get("stop") or {}
            while self.version < spec["updates"] and self.outcome is None:
                if time.monotonic() - self.t_start > self.cfg["time_limit"]:
                    self.outcome, self.reason = "stayed", "time_limit"
                    break
                try:
                    src = dist.recv(self.inbox)
                except RuntimeError as exc:  # nobody sent for `timeout` seconds
                    print(f"server: no worker answered within {self.cfg['timeout']} s ({str(exc)[:120]})", flush=True)
                    self._mark_lost(alive, alive.copy())
                    self.reason = "no_workers"
                    break
                now = time.monotonic()
                last_seen[src] = now
                if src not in alive:
                    alive.add(src)
                    self.lost_log.append({"rank": src, "event": "revived", "phase": spec["name"],
                                          "update": self.version, "last_update": self.last_update.get(src)})
                silent = {w for w in alive if now - last_seen[w] > self.cfg["worker_timeout"]}
                if silent:
                    self._mark_lost(alive, silent)
                phase_of, pulled, step = int(self.inbox[0]), int(self.inbox[1]), int(self.inbox[2])
                if phase_of == self.phase and step == self.steps.get(src, 0):
                    grad = self.inbox[HEADER:]
                    apply_update(self.state, grad, src, lr, self.cfg["variant"], float(self.cfg["momentum"]),
                                 self.cfg["velocity"])
                    self.rows.append({"update": self.version, "worker": src, "step": step, "pulled": pulled,
                                      "staleness": self.version - pulled,
                                      "time": round(now - self.phase_t0 + self.time_offset, 6)})
                    self.last_update[src] = self.version
                    self.version += 1
                    self.steps[src] = step + 1
                    self._evaluate(stop)
                    _maybe_fail(self.cfg, 0, self.version)
                    if self.version % self.cfg["checkpoint_every"] == 0:
                        self._checkpoint()
                # a push of an earlier phase (or of a worker's earlier life) is dropped: reply with the weights
                self._send(src, CMD_GRAD)
            self._finish_phase(lr)
        self._stop_workers(alive)

    def _mark_lost(self, alive, lost):
        for w in sorted(lost):
            alive.discard(w)
            self.lost_log.append({"rank": w, "event": "lost", "phase": self._phase_spec()["name"],
                                  "update": self.version, "last_update": self.last_update.get(w)})
            print(f"server: worker {w} lost at update {self.version} (its last update: "
                  f"{self.last_update.get(w)}); going on with {len(alive)}", flush=True)

    def _evaluate(self, stop):
        if self.version % self.cfg["eval_every"] and self.version != self._phase_spec()["updates"]:
            return
        loss = self.problem.loss(self.state["w"])
        self.losses.append({"update": self.version, "loss": loss})
        if not math.isfinite(loss) or ("above" in stop and loss > stop["above"]):
            self.outcome, self.reason = "left", "diverged" if not math.isfinite(loss) else "above"
        elif "below" in stop and loss < stop["below"]:
            self.below_run += 1
            if self.below_run >= stop.get("window", 1):
                self.outcome, self.reason = "stayed", "settled"
        else:
            self.below_run = 0

    def _finish_phase(self, lr):
        spec = self._phase_spec()
        outcome = self.outcome or "stayed"
        reason = self.reason or "budget"
        stal = [r["staleness"] for r in self.rows]
        summary = {
            "phase": spec["name"], "lr": lr, "factor": spec.get("factor"), "outcome": outcome,
            "stop_reason": reason, "updates": self.version,
            "mean_staleness": float(np.mean(stal)) if stal else None,
            "max_staleness": int(max(stal)) if stal else None,
            "loss_start": self.problem.loss(self.problem.w0.to(torch.float64)),
            "loss_end": self.losses[-1]["loss"] if self.losses else None,
            "losses": self.losses, "workers": len(self.workers), "variant": self.cfg["variant"],
            "momentum": self.cfg["momentum"], "jitter": spec.get("jitter", self.cfg["jitter"]),
            "seconds": round(time.monotonic() - self.phase_t0 + self.time_offset, 3),
            "lost": [e for e in self.lost_log if e["phase"] == spec["name"]],
            "restarts": self.restarts, "resumed_at": getattr(self, "resumed_at", None),
            **({"predicted_lr": self.edge["predicted_lr"], "alpha_star": self.edge["alpha_star"],
                "edge_from": self.cfg["edge_from"], "edge_mean_staleness": self.edge["mean_staleness"]}
               if self.edge else {}),
        }
        folder = self.out / spec["name"]
        write_phase_files(folder, self.rows, summary)
        torch.save(self.state["w"], folder / ".final_weights.pt.tmp")
        os.replace(folder / ".final_weights.pt.tmp", folder / "final_weights.pt")
        self.done[spec["name"]] = {"outcome": outcome, "lr": lr, "updates": self.version}
        if spec["name"] == self.cfg["edge_from"] and stal and self.cfg["sharpness"]:
            try:
                self.edge = predicted_edge(stal, self.cfg["sharpness"], self.cfg["variant"],
                                           float(self.cfg["momentum"]))
            except ValueError as exc:  # e.g. shifted momentum: no edge for a distribution
                print(f"server: no predicted edge ({exc})", flush=True)
        print(f"server: phase {spec['name']}: {outcome} ({reason}) after {self.version} updates at lr {lr:.6g}, "
              f"mean staleness {summary['mean_staleness']}", flush=True)
        self._fresh_phase(self.phase + 1)
        self._checkpoint()

    def _stop_workers(self, alive):
        """Every live worker owes one push (it was sent weights): receive it, answer STOP."""
        import torch.distributed as dist

        pending = set(alive)
        self.phase = min(self.phase, len(self.cfg["phases"]) - 1)  # name lost workers after the last phase
        while pending:
            try:
                src = dist.recv(self.inbox)
            except RuntimeError:  # the rest did not answer within `timeout`: lost
                self._mark_lost(alive, pending)
                break
            if src in pending:
                header = torch.tensor([CMD_STOP, 0, 0, 0], dtype=torch.float64)
                dist.send(torch.cat([header, torch.zeros(self.n, dtype=torch.float64)]), dst=src)
                pending.discard(src)
        write_json(self.out / "summary.json", {"phases": self.done, "edge": self.edge, "lost": self.lost_log,
                                               "workers": len(self.workers), "restarts": self.restarts,
                                               "sharpness": self.cfg["sharpness"], "variant": self.cfg["variant"],
                                               "momentum": self.cfg["momentum"], "jitter": self.cfg["jitter"]})


# ------------------------------------------------------------------------------------------------
# 5. A worker (rank ≥ 1)
# ------------------------------------------------------------------------------------------------


def work(cfg: dict, problem: Problem, rank: int) -> None:
    """Pull (receive the weights), compute g(w) on the batch of (seed, rank, step), pause for the
    jitter, push; until the server says stop."""
    import torch.distributed as dist

    n = problem.w0.numel()
    inbox = torch.zeros(HEADER + n, dtype=torch.float64)
    rng = random.Random(cfg["seed"] * 1_000_003 + rank)
    scales = cfg["jitter_scales"] or []
    scale = float(scales[rank - 1]) if rank - 1 < len(scales) else 1.0
    pauses = [scale * float(p.get("jitter", cfg["jitter"])) for p in cfg["phases"]]  # per phase
    done = 0
    while True:
        dist.recv(inbox, src=0)
        if inbox[0] == CMD_STOP:
            return
        phase, version, step = inbox[1].item(), inbox[2].item(), inbox[3].item()
        g = problem.grad(inbox[HEADER:], rank, int(step))
        mean_pause = pauses[min(int(phase), len(pauses) - 1)]
        if mean_pause > 0:
            time.sleep(rng.expovariate(1.0 / mean_pause))
        done += 1
        _maybe_fail(cfg, rank, done)
        dist.send(torch.cat([torch.tensor([phase, version, step, 0.0], dtype=torch.float64), g]), dst=0)


def _maybe_fail(cfg: dict, rank: int, count: int) -> None:
    """Fault injection (tests): SIGKILL this process once ``count`` reaches ``fail.after_steps``
    on rank ``fail.rank``, in the first life of the group only (torchrun's restart count 0)."""
    fail = cfg["fail"]
    if fail and fail.get("rank") == rank and count >= fail.get("after_steps", 0) \
            and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        print(f"rank {rank}: killed (fault injection) at {count}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------------------------
# 6. Entry point under torchrun
# ------------------------------------------------------------------------------------------------


def _join_group(rank: int, world: int, timeout: float) -> None:
    """The gloo process group from torchrun's store (``env://``), its keys prefixed by the restart
    count: after ``torchrun --max-restarts`` the new group must not read the old group's addresses."""
    import torch.distributed as dist

    delta = datetime.timedelta(seconds=timeout)
    store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=delta))
    life = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group("gloo", store=dist.PrefixStore(f"delay_stability/life{life}", store),
                            rank=rank, world_size=world, timeout=delta)


def serve(config_path: str, out: str) -> int:
    """Join the process group torchrun set up (RANK, WORLD_SIZE, MASTER_ADDR/PORT), then act as
    the server (rank 0) or a worker; write this rank's pid to ``<out>/pids/<rank>``."""
    from .files import read_json

    cfg = check_config(read_json(config_path, "run config"), config_path)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise UserError("parameter-server runs under torchrun (RANK and WORLD_SIZE are not set); see "
                        "README, 'Real workers'")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world < 2:
        raise UserError("parameter-server needs at least 2 processes (1 server + workers)")
    torch.set_num_threads(1)
    die_with_parent(signal.SIGKILL)  # torchrun's agent (or ``launch``) killed: this process ends too
    out = Path(out)
    (out / "pids").mkdir(parents=True, exist_ok=True)
    hold_writers_lock(out)  # until this process exits: a new launch on ``out`` waits for it
    (out / "pids" / str(rank)).write_text(str(os.getpid()))
    problem = Problem(cfg["init_checkpoint"], cfg["seed"], cfg["device"])
    _join_group(rank, world, float(cfg["timeout"]))
    status = 1
    try:
        if rank == 0:
            Server(cfg, out, problem, world - 1).run()
        else:
            work(cfg, problem, rank)
        status = 0
    except Exception:  # a lost peer or a timeout: say so, exit non-zero (torchrun may restart the group)
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # no collective shutdown: a lost peer must not make the others wait
        os._exit(status)


def _cli(args) -> int:
    return serve(args.config, args.out)


def register(subparsers) -> None:
    """Add `parameter-server` to the `delay-stability` command."""
    p = subparsers.add_parser(
        "parameter-server", help="run as server (rank 0) or worker of a real parameter server under torchrun",
        description="One process of a parameter server with real asynchronous workers (gloo). Start it with "
                    "torchrun --standalone --nproc-per-node M+1 -m delay_stability.cli parameter-server ...")
    p.add_argument("--config", required=True, help="run configuration (JSON)")
    p.add_argument("--out", required=True, help="run folder: per phase staleness.csv, histogram.csv, summary.json")
    p.set_defaults(func=_cli)
    p = subparsers.add_parser(
        "parameter-server-launch", help="launch a real parameter server on this machine (torchrun, loopback)",
        description="Run torchrun's agent with NPROC processes of parameter-server (1 server + NPROC-1 "
                    "workers). The c10d stores and gloo listen on one interface only (default: loopback, "
                    "127.0.0.1): c10d and gloo have no authentication. Every process ends when this one "
                    "ends, and a launch refuses to start while a process of an earlier one writes to --out.")
    p.add_argument("--nproc", type=int, required=True, help="processes: 1 server + workers")
    p.add_argument("--max-restarts", type=int, default=2, help="torchrun restarts of the group (default 2)")
    p.add_argument("--interface", help="network interface to listen on (default: the loopback interface); "
                                       "only on a network you trust")
    p.add_argument("--config", required=True, help="run configuration (JSON)")
    p.add_argument("--out", required=True, help="run folder")
    p.set_defaults(func=_cli_launch)


# ------------------------------------------------------------------------------------------------
# 7. The launch: torchrun's agent, closed to the network, its processes tied to it
# ------------------------------------------------------------------------------------------------
#
# c10d's TCPStore and gloo authenticate nothing: whoever reaches their ports reads and writes the
# rendezvous, the weights and the gradients. ``torchrun --standalone`` listens on every interface
# (the rendezvous store and the agent's store bind the wildcard address; gloo binds what the
# hostname resolves to). ``launch`` runs torchrun's own agent (``torch.distributed.run``) in this
# process with both stores listening only on one interface's address (127.0.0.1 by default: the
# loopback interface) and gloo on the same interface (GLOO_SOCKET_IFNAME). Every process of the
# launch dies with its parent (``PR_SET_PDEATHSIG``), and a launch refuses to start while a process
# of an earlier launch on the same folder still holds the folder's writers' lock.

LAUNCHER_ENV = "DELAY_STABILITY_LAUNCHER_PID"
WRITERS_LOCK = ".writers.lock"
LAUNCH_LOCK = ".launch.lock"
_PR_SET_PDEATHSIG = 1
_LISTENING: list = []


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent exits (Linux ``prctl``); then,
    if the parent is already gone (it died before the call: we were re-parented), exit at once.
    Returns False where the platform has no ``prctl`` (nothing is done there)."""
    import ctypes
    import ctypes.util

    expected = os.environ.get(LAUNCHER_ENV)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if expected and os.getppid() != int(expected):
        os._exit(1)  # the launcher died before we asked to die with it
    return True


def interface_address(name: str) -> str:
    """The IPv4 address of network interface ``name`` (SIOCGIFADDR); UserError naming it otherwise."""
    import fcntl
    import struct

    names = [n for _, n in socket.if_nameindex()]
    if name not in names:
        raise UserError(f"--interface {name}: no such network interface (this machine has: {', '.join(names)})")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
        except OSError:
            raise UserError(f"--interface {name}: the interface has no IPv4 address") from None
    return socket.inet_ntoa(packed[20:24])


def loopback_interface() -> str:
    """The name of the interface whose address is 127.0.0.1 (``lo`` on Linux)."""
    for _, name in socket.if_nameindex():
        try:
            if interface_address(name) == "127.0.0.1":
                return name
        except UserError:
            continue
    raise UserError("no network interface has the address 127.0.0.1; name one with --interface")


def bound_store(address: str, port: int = 0, **kwargs):
    """A TCPStore *server* listening on ``address`` only (TCPStore itself binds the wildcard address):
    the socket is bound here and handed over with ``master_listen_fd``."""
    import torch.distributed as dist

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, int(port)))
    sock.listen(128)
    sock.set_inheritable(False)
    kwargs.pop("is_master", None)
    kwargs.pop("host_name", None)
    store = dist.TCPStore(address, sock.getsockname()[1], is_master=True, master_listen_fd=sock.fileno(), **kwargs)
    _LISTENING.append(sock)  # the store serves from this socket: keep it open as long as the process
    return store


def _bind_torchrun_stores(address: str) -> None:
    """Make torchrun's c10d rendezvous store and its agent store (the one the workers use) listen on
    ``address`` only. These are the two places torch.distributed.elastic creates a store server."""
    import torch.distributed as dist
    from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend as c10d_backend
    from torch.distributed.elastic.rendezvous import dynamic_rendezvous

    real = dist.TCPStore

    def tcp_store(host_name, port, *args, is_master=False, **kwargs):  # as c10d_rendezvous_backend calls it
        if not is_master:
            return real(host_name, port, *args, is_master=False, **kwargs)
        return bound_store(address, port, *args, **kwargs)

    def shared_store_server(self, master_addr, master_port):
        return bound_store(address, master_port, multi_tenant=True)

    c10d_backend.TCPStore = tcp_store
    dynamic_rendezvous.DynamicRendezvousHandler._create_tcp_store_server = shared_store_server


def _lock(path: Path, mode: int) -> int | None:
    """An open descriptor holding flock ``mode`` (non-blocking) on ``path``, or None if it is held."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def live_writers(out) -> list[int]:
    """The pids (``<out>/pids/<rank>``) of processes that still hold ``<out>``'s writers' lock."""
    import fcntl

    out = Path(out)
    fd = _lock(out / WRITERS_LOCK, fcntl.LOCK_EX)
    if fd is not None:
        os.close(fd)
        return []
    pids = []
    for f in sorted((out / "pids").glob("*")) if (out / "pids").is_dir() else []:
        try:
            pid = int(f.read_text())
            os.kill(pid, 0)
            pids.append(pid)
        except (ValueError, OSError):
            continue
    return pids or [-1]


def hold_writers_lock(out) -> int:
    """Called by every process of a launch before it writes under ``out``: a shared lock on the
    folder's writers' lock, held until the process exits (the kernel drops it then)."""
    import fcntl

    fd = _lock(Path(out) / WRITERS_LOCK, fcntl.LOCK_SH)
    if fd is None:  # an exclusive holder is a launcher checking: wait for it
        fd = os.open(Path(out) / WRITERS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def torchrun_args(nproc: int, max_restarts: int, address: str, config: str, out: str) -> list[str]:
    """torchrun's arguments for one machine: a c10d rendezvous on ``address`` (a free port), the agent
    and its workers on the same address, ``nproc`` processes running ``parameter-server``."""
    import uuid

    return ["--nnodes", "1", "--nproc-per-node", str(nproc), "--max-restarts", str(max_restarts),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{address}:0", "--rdzv-id", str(uuid.uuid4()),
            "--rdzv-conf", "is_host=1", "--local-addr", address, "--monitor-interval", "0.5",
            "-m", "delay_stability.cli", "parameter-server", "--config", str(config), "--out", str(out)]


def launch(nproc: int, config: str, out: str, max_restarts: int = 2, interface: str | None = None) -> int:
    """Run one launch of ``nproc`` processes (server + workers) under torchrun's agent in this process:
    stores and gloo on ``interface`` (default: loopback), every process killed when this one dies,
    no start while an earlier launch's process still writes to ``out``. Returns torchrun's status."""
    import fcntl

    if nproc < 2:
        raise UserError("--nproc must be at least 2 (1 server + workers)")
    if max_restarts < 0:
        raise UserError("--max-restarts must be >= 0")
    name = interface or loopback_interface()
    address = interface_address(name)
    out_dir = Path(out)
    guard = _lock(out_dir / LAUNCH_LOCK, fcntl.LOCK_EX)
    if guard is None:
        raise UserError(f"{out_dir}: another launch on this folder is running; wait for it to end")
    writers = live_writers(out_dir)
    if writers:
        alive = " ".join(str(p) for p in writers if p > 0) or "(unknown pids)"
        raise UserError(f"{out_dir}: processes of an earlier launch still write there (pids {alive}); "
                        f"end them (kill {alive}) and launch again")
    die_with_parent(signal.SIGTERM)  # this agent ends (and ends its workers) when whoever started it dies
    os.environ[LAUNCHER_ENV] = str(os.getpid())
    os.environ["GLOO_SOCKET_IFNAME"] = name
    os.environ.pop("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", None)
    _bind_torchrun_stores(address)
    from torch.distributed import run as torchrun

    print(f"launch: {nproc} processes, c10d stores and gloo on {name} ({address}) only", flush=True)
    try:
        torchrun.main(torchrun_args(nproc, max_restarts, address, config, out))
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except Exception as exc:  # torchrun's ChildFailedError: the workers' errors are in the log above
        print(f"launch: {exc.__class__.__name__}: {str(exc)[:2000]}", file=sys.stderr, flush=True)
        return 1
    finally:
        os.close(guard)
    return 0


def _cli_launch(args) -> int:
    return launch(args.nproc, args.config, args.out, args.max_restarts, args.interface)
