"""The delayed edge of stability: sharpness along training self-stabilises at α*(τ)/η.

Full-batch gradient descent trains "at the edge of stability" (Cohen et al., ICLR 2021): the
sharpness a(t) = λmax(∇²L(w_t)) rises during training (progressive sharpening) until it reaches
2/η, the largest value at which GD on the quadratic model is stable, and then hovers there while
the loss keeps falling, non-monotonically. For delayed updates w_{t+1} = w_t − η ∇L(w_{t−τ})
(eq. 2) the quadratic model along the top eigenvector is stable iff every root of

    z^{τ+1} − z^τ + aη = 0                                                    (eq. 4)

lies strictly inside the unit circle, i.e. iff aη < α*(τ) = 2 sin(π/(4τ+2)) (eq. 6). The
prediction tested here is that delayed GD self-stabilises at the delayed edge

    a* = α*(τ, m) / η,

with α* of plain delay (eq. 4/6), server momentum with dampening (eq. 26) or shifted momentum
(eq. 11) from ``theory.critical_alpha``.

The file reads top to bottom:

1. ``SharpnessTracker``: a callback of ``train.run_training`` that computes a(t) every k steps by
   Lanczos warm-started from the previous top eigenvector and keeps the tidy table sharpness.csv
   (TRACK_COLUMNS), written atomically and consistent with the run's checkpoints on resume;
2. ``edge_alpha`` / ``predicted_edge``: α* and α*/η of a training spec;
3. the command ``eos-run``.

The analysis of finished runs (``plateau``, ``collect``, ``eos-collect``) and the figure's options are in
eos_tables.py, apart from the code that trains, so that editing them never reruns a training job.

Files of a tracked run (besides those of ``train.run_training``):

    eos.json                 the series label, the edge (if the lr was set from it) and the tracking
                             settings; a resumed run must use the same settings
    sharpness.partial.csv    the track so far, rewritten atomically after every measurement
    sharpness.csv            the finished track (written when the run ends; the partial file goes)

Resume: ``run_training`` continues from the last checkpoint (step S); the tracker keeps the rows
with step ≤ S and measures the later steps again, so the finished table has the same steps and
losses as an uninterrupted run, and (the warm-start eigenvector is saved in every checkpoint) the
same sharpness values, bit for bit.
"""

from __future__ import annotations

import csv
import math
import os
import time

from .. import theory
from ..errors import UserError
from ..files import read_json, write_csv, write_json
from ..spec import apply_overrides, deep_merge, delay_probabilities, read_spec, spec_differences, validate_spec

#: Columns of sharpness.csv, in order (the one place they are named).
TRACK_COLUMNS = ("step", "sharpness", "loss", "hvps", "converged", "residual", "seconds")

TRACK_FILE = "sharpness.csv"
PARTIAL_FILE = "sharpness.partial.csv"
SETTINGS_FILE = "eos.json"



# ------------------------------------------------------------------------------------------------
# 1. Sharpness tracking along training
# ------------------------------------------------------------------------------------------------


class SharpnessTracker:
    """Callback ``cb(event, state)`` for ``train.run_training`` that tracks the sharpness.

    At step 0 and every ``every`` optimizer steps (and at the last step) it computes
    a(t) = λmax(H(w_t)), H the Hessian of the mean training loss over the whole training set at the
    current weights (``sharpness.top_eigenvalue``: Lanczos, or power iteration, stopped when
    ‖Hy − θy‖ ≤ tol·|θ|), starting from the previous top eigenvector (a warm start: a(t) moves
    little between measurements, so a few Hessian-vector products suffice). ``loss`` is the mean
    training loss at the same weights. HVPs use batches of ``hvp_batch`` samples (None: the run's
    training batch size; 0: the whole set in one batch). BatchNorm uses batch statistics and
    leaves its running statistics alone (sharpness.py's bn_mode="train").

    Tracking reads the weights only: it consumes no random numbers of the run, so the trained
    weights are bit-for-bit those of the same run without tracking.
    """

    def __init__(self, out_dir, every, *, tol=1e-3, max_iter=100, method="lanczos", hvp_batch=None,
                 seed=0):
        from .. import sharpness
        self.out_dir = out_dir
        self.every = _positive_int("--track-every", every)
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
            raise UserError(f"--tol must be a positive number, got {tol!r}")
        self.tol = float(tol)
        self.max_iter = _positive_int("--max-iter", max_iter)
        if method not in sharpness.METHODS:
            raise UserError(f"--method must be one of {', '.join(sharpness.METHODS)}; got {method!r}")
        self.method = method
        if hvp_batch is not None and (isinstance(hvp_batch, bool) or not isinstance(hvp_batch, int) or hvp_batch < 0):
            raise UserError(f"--hvp-batch must be an integer >= 0, got {hvp_batch!r}")
        self.hvp_batch = hvp_batch
        self.seed = int(seed)
        self.rows: list[dict] = []
        self.vector = None
        self.batches = None

    # -- the callback

    def __call__(self, event, state):
        if event == "start":
            self._start(state)
        elif event == "step" and state.step % self.every == 0:
            self._measure(state)
        elif event == "end":
            if not self.rows or self.rows[-1]["step"] != state.step:
                self._measure(state)
            self._finish()

    def state_dict(self) -> dict:
        """What a resumed run needs to measure bit for bit as an uninterrupted one: the warm start."""
        return {"vector": None if self.vector is None else self.vector.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self._resumed_vector = state.get("vector")

    def _start(self, state):
        self.batches = self._hessian_batches(state)
        resumed = getattr(self, "_resumed_vector", None)
        self.vector = None if resumed is None or state.step == 0 else resumed.to(self.batches[0][0].device)
        if state.step == 0:  # a fresh run: forget any table of an earlier run in this folder
            self.rows = []
            self._measure(state)
            return
        self.rows = [r for r in read_track_rows(self.out_dir) if r["step"] <= state.step]
        missing = sorted(set(range(0, state.step + 1, self.every)) - {r["step"] for r in self.rows})
        if missing:
            raise UserError(
                f"{self.out_dir}: the run resumes at step {state.step} but its sharpness track lacks "
                f"step {missing[0]}{' and more' if len(missing) > 1 else ''}; delete the folder to start afresh")
        self._write(PARTIAL_FILE)

    def _measure(self, state):
        import torch
        model, loss_fn = state.model, state.loss_fn
        start = time.perf_counter()
        loss = mean_loss(model, loss_fn, self.batches)
        row = {"step": int(state.step), "sharpness": math.nan, "loss": loss, "hvps": 0,
               "converged": 0, "residual": math.nan}
        if math.isfinite(loss):
            result = self._top_eigenvalue(model, loss_fn, state.step)
            finite = math.isfinite(result.eigenvalue) and bool(torch.isfinite(result.eigenvector).all())
            self.vector = result.eigenvector if finite else None  # a broken vector is no warm start
            row.update(sharpness=result.eigenvalue, hvps=result.hvps,
                       converged=int(result.converged), residual=result.residual)
        row["seconds"] = round(time.perf_counter() - start, 4)
        self.rows.append(row)
        self._write(PARTIAL_FILE)

    def _top_eigenvalue(self, model, loss_fn, step):
        from .. import sharpness
        import torch
        generator = torch.Generator().manual_seed(self.seed + int(step))  # cold starts only
        return sharpness.top_eigenvalue(
            model, loss_fn, self.batches, tol=self.tol, max_iter=self.max_iter, method=self.method,
            init=self.vector, generator=generator, bn_mode="train")

    def _hessian_batches(self, state):
        from .. import train
        size = self.hvp_batch if self.hvp_batch is not None else int(state.spec["batch_size"])
        return train.training_batches(state.dataset, size)

    # -- files

    def _write(self, name):
        write_csv(os.path.join(self.out_dir, name), TRACK_COLUMNS, self.rows)

    def _finish(self):
        self._write(TRACK_FILE)
        partial = os.path.join(self.out_dir, PARTIAL_FILE)
        if os.path.exists(partial):
            os.remove(partial)


def _positive_int(flag, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{flag} must be an integer >= 1, got {value!r}")
    return value


def mean_loss(model, loss_fn, batches) -> float:
    """L(w) = Σ_b (n_b/N) L_b(w): the mean training loss over all samples, in the Hessian's mode
    (``sharpness.hessian_mode``: dropout off, BatchNorm with batch statistics)."""
    from .. import sharpness, train
    with sharpness.hessian_mode(model, "train"):
        return train.mean_loss(model, loss_fn, batches)


def read_track_rows(out_dir) -> list[dict]:
    """The rows of a run's track so far: sharpness.partial.csv if present (a run in progress),
    else sharpness.csv (a finished run), else none. A file that is not a track is a UserError."""
    for name in (PARTIAL_FILE, TRACK_FILE):
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            return read_track(path)
    return []


def read_track(path) -> list[dict]:
    """sharpness.csv as a list of rows (ints for step, hvps and converged; floats otherwise)."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = tuple(reader.fieldnames or ())
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: cannot be read ({exc})") from None
    if header != TRACK_COLUMNS:
        raise UserError(f"{path}: not a sharpness track (columns {', '.join(header) or 'none'}; "
                        f"expected {', '.join(TRACK_COLUMNS)}); delete it to start afresh")
    out = []
    for i, row in enumerate(rows, start=2):
        try:
            out.append({k: (int(row[k]) if k in ("step", "hvps", "converged") else float(row[k]))
                        for k in TRACK_COLUMNS})
        except (TypeError, ValueError):
            raise UserError(f"{path}: line {i} is corrupt; delete the file to start afresh") from None
    return out


# ------------------------------------------------------------------------------------------------
# 2. The predicted edge of a training spec
# ------------------------------------------------------------------------------------------------


def delay_of(spec) -> int | list:
    """The delay of a validated spec as ``theory`` takes it: an int τ (round robin), P(τ = k)
    of a delay distribution, or, for M workers picked at random, the geometric staleness
    P(τ = k) = (1/M)(1 − 1/M)^k of *Asynchrony begets Momentum*."""
    o = spec["optimizer"]
    if o["schedule"] == "random":
        workers = o["workers"] if o["workers"] is not None else o["delay"] + 1
        return [float(p) for p in theory.geometric_delay(1.0 - 1.0 / workers)]
    if isinstance(o["delay"], dict):
        return delay_probabilities(o["delay"])
    if o["schedule"] != "round_robin":  # gaussian, compute_time, replay: no closed-form staleness law here
        raise UserError(f"eos: schedule {o['schedule']!r} has no predicted edge (use round_robin, random or iid)")
    return int(o["delay"])


def edge_alpha(spec) -> float:
    """α* = a·η at the stability edge for the optimizer of a validated spec:
    ``theory.critical_alpha(τ, m, variant)`` (eq. 4/6 plain, eq. 26 server momentum with
    dampening, eq. 11 shifted momentum, eq. 19 stochastic delay)."""
    o = spec["optimizer"]
    if o["momentum"] != 0 and not o["dampening"]:
        raise UserError("spec key 'optimizer.dampening': the predicted edge (eq. 26) assumes dampening")
    if o["weight_decay"] != 0:
        raise UserError("spec key 'optimizer.weight_decay': the predicted edge assumes no weight decay "
                        "(it shifts the Hessian by the decay)")
    try:
        return float(theory.critical_alpha(delay_of(spec), o["momentum"], o["variant"]))
    except ValueError as exc:
        raise UserError(f"spec key 'optimizer': {exc}") from None


def predicted_edge(spec) -> float:
    """The predicted plateau of the sharpness, a* = α*(τ, m) / η (η = the spec's lr)."""
    return edge_alpha(spec) / spec["lr"]


def with_edge_lr(spec: dict, edge: float) -> dict:
    """The spec with η = α*(τ, m)/edge, so that the predicted plateau is ``edge`` for every τ and m
    (the paper's rule that η must fall as α*(τ), eq. 8). The spec must not set lr itself."""
    if not (isinstance(edge, (int, float)) and math.isfinite(edge) and edge > 0):
        raise UserError(f"--edge must be a positive number, got {edge!r}")
    if "lr" in spec:
        raise UserError("--edge sets the learning rate (lr = α*/edge): remove 'lr' from the spec")
    probe = validate_spec({**spec, "lr": 1.0})
    return {**spec, "lr": edge_alpha(probe) / edge}


# ------------------------------------------------------------------------------------------------
# 3. Command: eos-run
# ------------------------------------------------------------------------------------------------


def run_tracked(spec, out_dir, *, every, tol=1e-3, max_iter=100, method="lanczos", hvp_batch=None,
                series="", edge=None) -> dict:
    """Train as ``spec`` says with a SharpnessTracker; returns the run's summary.

    ``edge``: set η = α*(τ, m)/edge (``with_edge_lr``). A folder that holds a checkpoint of the
    same spec resumes; its tracking settings (eos.json) must then be the same.
    """
    from .. import train
    if edge is not None:
        spec = with_edge_lr(spec, edge)
    settings = {"series": series, "edge": edge, "track_every": every, "tol": tol,
                "max_iter": max_iter, "method": method, "hvp_batch": hvp_batch}
    tracker = SharpnessTracker(out_dir, every, tol=tol, max_iter=max_iter, method=method,
                               hvp_batch=hvp_batch, seed=int(spec.get("seed", 0)))
    train.prepare_folder(out_dir, validate_spec(spec))
    if _will_resume(out_dir, validate_spec(spec)):
        _check_settings(out_dir, settings)
    write_json(os.path.join(out_dir, SETTINGS_FILE), settings)
    return train.run_training(spec, out_dir, callbacks=[tracker], code=(__name__,), key_extra=settings)


def _will_resume(out_dir, spec) -> bool:
    """Whether ``train.run_training`` will continue a run in ``out_dir``: an interrupted one
    (checkpoint.pt), or a finished one (final.pt) of the same spec."""
    from .. import train
    if os.path.exists(os.path.join(out_dir, "checkpoint.pt")):
        return True
    final = os.path.join(out_dir, "final.pt")
    return os.path.exists(final) and not spec_differences(train.load_checkpoint(final).get("spec"), spec)


def read_run_record(path, what="run record"):
    """A JSON record of a run (eos.json, run.json, summary.json); UserError naming the file."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file (is the run finished?)")
    return read_json(path, what)


def _check_settings(out_dir, settings):
    """A run that resumes must keep the tracking settings it was started with (eos.json)."""
    path = os.path.join(out_dir, SETTINGS_FILE)
    if not os.path.exists(path):
        return
    previous = read_run_record(path, "tracking settings")
    changed = [k for k in settings if previous.get(k) != settings[k]]
    if changed:
        what = ", ".join(f"{k} {previous.get(k)!r} -> {settings[k]!r}" for k in changed)
        raise UserError(f"{out_dir} holds a run tracked with other settings ({what}); "
                        "use another --out folder or delete it to start afresh")


def _cli_run(args) -> int:
    spec = apply_overrides(read_spec(args.spec), args.set)
    summary = run_tracked(spec, args.out, every=args.track_every, tol=args.tol,
                          max_iter=args.max_iter, method=args.method, hvp_batch=args.hvp_batch,
                          series=args.series, edge=args.edge)
    rows = read_track(os.path.join(args.out, TRACK_FILE))
    last = rows[-1]
    print(f"{args.out}: {summary['status']} after {summary['steps']} steps; sharpness "
          f"{rows[0]['sharpness']:.4g} -> {last['sharpness']:.4g} ({len(rows)} measurements, "
          f"{sum(r['hvps'] for r in rows)} HVPs)")
    return 0


def register(subparsers) -> None:
    """Add ``eos-run`` (``eos-collect`` is in delay_stability.eos_tables)."""
    from .. import sharpness
    p = subparsers.add_parser(
        "eos-run", help="train with sharpness tracking (delayed edge of stability)",
        description="Train as the spec says (like `train`) and track the sharpness λmax(H) every K "
                    "steps by warm-started Lanczos into DIR/sharpness.csv; resumes like `train`.")
    p.add_argument("--spec", required=True, metavar="FILE", help="training spec, .yaml or .json")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key, e.g. --set optimizer.delay=4 (repeatable)")
    p.add_argument("--track-every", type=int, required=True, metavar="K",
                   help="measure the sharpness every K optimizer steps (and at the first and last)")
    p.add_argument("--tol", type=float, default=1e-3, help="relative residual tolerance (default 1e-3)")
    p.add_argument("--max-iter", type=int, default=100, help="most HVPs per measurement (default 100)")
    p.add_argument("--method", choices=sharpness.METHODS, default="lanczos")
    p.add_argument("--hvp-batch", type=int, default=None, metavar="N",
                   help="HVP batch size (default: the training batch size; 0 = the whole set)")
    p.add_argument("--edge", type=float, default=None, metavar="A",
                   help="set lr = α*(τ, m)/A so that the predicted plateau is A (the spec must not set lr)")
    p.add_argument("--series", default="", help="a label stored with the run (e.g. fixed, scaled)")
    p.set_defaults(func=_cli_run)


# ------------------------------------------------------------------------------------------------
# 4. The runs of the experiment (workflow/rules/eos.smk)
# ------------------------------------------------------------------------------------------------

#: The files a tracked run leaves in its folder (final.pt too, so that a rerun starts afresh).
RUN_FILES = ("sharpness.csv", "summary.json", "run.json", "final.pt")


def fixed_runs(block: dict, base: dict) -> dict:
    """The fixed-η runs: ``base`` (the eos.train spec) over the grid lr × τ of ``block["fixed"]``,
    from initialisation; {folder name (``lr<η>/tau<τ>``): grid.GridRun}."""
    from .grid import expand

    fixed = block.get("fixed")
    if not fixed:
        return {}
    runs = expand(deep_merge(base, {"epochs": fixed["epochs"]}), {"lr": fixed["lrs"], "tau": fixed["taus"]})
    return {run.name: run for run in runs}


def scaled_runs(block: dict) -> list[tuple[str, float, int]]:
    """(variant, m, τ) of every run with η = α*(τ, m)/edge."""
    scaled = block.get("scaled")
    return [(r["variant"], float(r["momentum"]), int(tau)) for r in scaled["runs"] for tau in r["taus"]] if scaled else []


def scaled_folder(root, variant: str, m: float, tau: int) -> str:
    """``<root>/scaled/<variant>-m<m>/tau<τ>``: a scaled run's folder."""
    return os.path.join(str(root), "scaled", f"{variant}-m{m:g}", f"tau{tau}")


def burn_in_spec(block: dict, base: dict) -> dict:
    """Synchronous GD from initialisation to just below the edge: the scaled runs' shared start."""
    burn = block["scaled"]["burn_in"]
    return deep_merge(base, {"lr": burn["lr"], "epochs": burn["epochs"], "optimizer": {"delay": 0}})


def scaled_spec(block: dict, base: dict, variant: str, m: float, tau: int, init_checkpoint: str) -> dict:
    """A scaled run: no lr (``eos-run --edge`` sets η = α*(τ, m)/edge), from the burn-in, with
    ``epochs + epochs_per_tau·τ`` epochs (η falls as α*(τ), so the dynamics slow down)."""
    scaled = block["scaled"]
    spec = deep_merge(base, {
        "epochs": scaled["epochs"] + scaled["epochs_per_tau"] * tau,
        "optimizer": {"delay": tau, "variant": variant, "momentum": m},
        "init_checkpoint": str(init_checkpoint), "perturb": scaled["perturb"],
    })
    spec.pop("lr", None)
    return spec


def track_files(root, block: dict, base: dict) -> list[str]:
    """sharpness.csv of every run the figure reads."""
    folders = [os.path.join(str(root), "fixed", name) for name in fixed_runs(block, base)]
    folders += [scaled_folder(root, *r) for r in scaled_runs(block)]
    return [os.path.join(f, TRACK_FILE) for f in folders]


def track_flags(track: dict) -> str:
    """``eos-run`` tracking flags of a ``track`` block."""
    flags = [f"--track-every {track['every']}", f"--tol {track['tol']}", f"--max-iter {track['max_iter']}",
             f"--method {track['method']}"]
    if "hvp_batch" in track:
        flags.append(f"--hvp-batch {track['hvp_batch']}")
    return " ".join(flags)
