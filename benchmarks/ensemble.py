"""Benchmark of the ensemble engine -> benchmarks/results/ensemble.json.

The ratio (R runs one by one) / (one ensemble of R), in one process, per training step: the loop's
inner step (forward, backward, the DelayedSGD update with tau = 4; float32, batch 64 of the digits,
each member its own minibatch) of one ``train.Run`` times R, against one ``ensemble._Batch.step``
of R members with different seeds and learning rates. Evaluation, checkpoints and files are left
out (they are per epoch, not per step, and batch as well or better). For

* an MLP 64-128-128-10 (ReLU),
* ``cnn_digits`` with BatchNorm (the quick stand-in of figures 11 and Table 1's CNN),
* ``resnet_digits`` (the quick stand-in of ResNet-50, figures 5 and 9),

at R = 4, 16, 64 and torch threads 1 and 2, for each kernel of ``ensemble.KERNELS`` that applies:
``stacked`` (members along the channel axis, grouped convolutions; channels-last as a variant,
``stacked+channels_last``) and ``vmap`` (torch.func's batching rules, which also turn per-member
convolutions into grouped ones, through a transposed layout). ``torch.compile`` is tried once, on the
stacked step of cnn_digits at R = 16, 1 thread (its compile time is recorded apart).

Memory per member: the bytes of the ensemble's state per member (weights, in-flight gradients,
velocities, BatchNorm buffers), and the growth of the process's peak resident memory across the
ensemble's steps divided by R (activations and autograd buffers included; R ascending, so each peak
is that R's).

Goals (issue "One engine, batched"): >= 4x for cnn_digits and resnet_digits and >= 6x for the MLP at
R = 16 with 1 thread; ``goals`` says by how much each is missed. Run:
``python benchmarks/ensemble.py [--steps 3] [--out PATH]`` (about 3-4 minutes of CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "ensemble.json")
MODELS = {
    "mlp": {"model": "mlp", "model_args": {"hidden": [128, 128], "activation": "relu"}},
    "cnn_digits": {"model": "cnn_digits", "model_args": {"batchnorm": True}},
    "resnet_digits": {"model": "resnet_digits", "model_args": {}},
}
GOALS = {"mlp": 6.0, "cnn_digits": 4.0, "resnet_digits": 4.0}
MEMBERS = (4, 16, 64)
LRS = (0.01, 0.02, 0.05, 0.1)


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _spec(name: str, threads: int, seed: int = 0) -> dict:
    from delay_stability.spec import validate_spec

    return validate_spec(dict(MODELS[name], dataset="digits", loss="cross_entropy", dtype="float32", device="cpu",
                              threads=threads, epochs=1, batch_size=64, lr=LRS[seed % len(LRS)], seed=seed,
                              optimizer={"delay": 4}))


def _single_step_seconds(name: str, threads: int, steps: int) -> float:
    """Seconds per training step of one train.Run (its _train_epoch's inner step)."""
    from delay_stability.train import Run

    run = Run(_spec(name, threads), tempfile.mkdtemp(prefix="bench-single-"))
    run.model.train()
    x, y = run.data.train_x[:64], run.data.train_y[:64]

    def step():
        out = run.model(x)
        loss = run.loss_fn(out, y)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def _batch(name: str, threads: int, R: int, kernel: str):
    from delay_stability.ensemble import Member, _Batch, _Family, _init

    spec = _spec(name, threads)
    fam = _Family(spec, kernel)
    members = []
    for r in range(R):
        m = Member(r, _spec(name, threads, r), "", "")
        _init(fam, m)
        members.append(m)
    batch = _Batch(fam, members)
    batch.set_lrs([m.spec["lr"] for m in members])
    idx = torch.randint(0, fam.data.num_train, (R, 64), generator=torch.Generator().manual_seed(0))
    x, y = fam.data.train_x[idx], fam.data.train_y[idx]
    state = sum(t.numel() * t.element_size() for t in [batch.w, batch.ring, *batch.bufs.values()]
                + ([batch.vel] if batch.vel is not None else []))
    return batch, x, y, state // R


def _ensemble_step_seconds(batch, x, y, steps: int, channels_last: bool = False) -> float:
    if channels_last:
        batch.fam._stacked.channels_last = True
    for t in range(2):
        batch.step(t, x, y, 0)
    start = time.perf_counter()
    for t in range(steps):
        batch.step(t + 2, x, y, 0)
    return (time.perf_counter() - start) / steps


def measure(name: str, threads: int, steps: int) -> list[dict]:
    """Every kernel at every R for one model and thread count (run in a subprocess of its own)."""
    torch.set_num_threads(threads)
    single = _single_step_seconds(name, threads, max(steps * 4, 8))
    cases = []
    kernels = [("stacked", False), ("stacked", True), ("vmap", False)]
    if name == "mlp":
        kernels = [("stacked", False), ("vmap", False)]  # no convolution: channels-last does not apply
    for R in MEMBERS:
        for kernel, cl in kernels:
            before = _peak_rss()
            batch, x, y, state = _batch(name, threads, R, kernel)
            seconds = _ensemble_step_seconds(batch, x, y, max(2, (steps * 16) // R), cl)
            peak = _peak_rss()
            cases.append({
                "model": name, "threads": threads, "members": R,
                "kernel": kernel + ("+channels_last" if cl else ""),
                "single_step_ms": round(single * 1e3, 3), "ensemble_step_ms": round(seconds * 1e3, 3),
                "ratio": round(R * single / seconds, 2),
                "state_bytes_per_member": state,
                "peak_memory_growth_per_member": max(peak - before, 0) // R,
            })
            print(json.dumps(cases[-1]), flush=True)
            del batch
    return cases


def try_compile(threads: int, steps: int) -> dict:
    """torch.compile of the stacked step (forward, loss and autograd) of cnn_digits, R = 16."""
    torch.set_num_threads(threads)
    batch, x, y, _ = _batch("cnn_digits", threads, 16, "stacked")
    plain = _ensemble_step_seconds(batch, x, y, steps)
    fam = batch.fam
    eager = fam._stacked.__call__
    try:
        start = time.perf_counter()
        fam._stacked = _Compiled(torch.compile(eager), fam._stacked)
        batch.step(0, x, y, 0)
        compile_s = time.perf_counter() - start
        seconds = _ensemble_step_seconds(batch, x, y, steps)
        return {"model": "cnn_digits", "threads": threads, "members": 16, "kernel": "stacked+torch.compile",
                "compile_seconds": round(compile_s, 1), "ensemble_step_ms": round(seconds * 1e3, 3),
                "eager_step_ms": round(plain * 1e3, 3), "speedup_over_eager": round(plain / seconds, 2)}
    except Exception as exc:  # report why, do not fail the benchmark
        return {"model": "cnn_digits", "threads": threads, "members": 16, "kernel": "stacked+torch.compile",
                "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"}


class _Compiled:
    """A compiled stand-in for ensemble._Stacked (same call)."""

    def __init__(self, fn, stacked):
        self.fn, self.stacked = fn, stacked

    def __call__(self, params, bufs, x, train):
        return self.fn(params, bufs, x, train)

    def __getattr__(self, name):
        return getattr(self.stacked, name)


def write_table(record: dict, path: str) -> None:
    """The README's table (benchmarks/results/ensemble.md): the goal cases at R = 16, 1 thread, with
    the best kernel, the ratio, the goal, and the load the measurement ran under."""
    before, after = record["load_average_before"][0], record["load_average_after"][0]
    lines = ["| model | R | threads | best kernel | ratio | goal | met | load (1-min) before / after |",
             "|---|---|---|---|---|---|---|---|"]
    for g in record["goals"]:
        lines.append(f"| `{g['model']}` | {g['members']} | {g['threads']} | {g['kernel']} | {g['ratio']}× | "
                     f"{g['goal']:g}× | {'yes' if g['met'] else 'no'} | {before:.2f} / {after:.2f} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed ensemble steps at R = 16 (scaled by 16/R)")
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--case", nargs=2, metavar=("MODEL", "THREADS"), help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--table-only", action="store_true", help="rewrite ensemble.md from the JSON, measure nothing")
    args = parser.parse_args()
    table = os.path.splitext(args.out)[0] + ".md"
    if args.table_only:
        with open(args.out) as f:
            write_table(json.load(f), table)
        return
    if args.case:  # a subprocess: one model at one thread count
        print("CASES " + json.dumps(measure(args.case[0], int(args.case[1]), args.steps)), flush=True)
        return
    if args.compile:
        print("CASES " + json.dumps([try_compile(1, args.steps)]), flush=True)
        return
    load_before = os.getloadavg()
    cases, compiled = [], []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for threads in (1, 2):
        for name in MODELS:
            done = subprocess.run([sys.executable, __file__, "--case", name, str(threads), "--steps", str(args.steps)],
                                  env=env, capture_output=True, text=True, check=True)
            cases += json.loads(done.stdout.split("CASES ", 1)[1])
    done = subprocess.run([sys.executable, __file__, "--compile", "--steps", str(args.steps)],
                          env=env, capture_output=True, text=True)
    compiled = json.loads(done.stdout.split("CASES ", 1)[1]) if "CASES " in done.stdout else [
        {"kernel": "stacked+torch.compile", "error": done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else "failed"}]
    best = {}
    for c in cases:
        key = (c["model"], c["threads"], c["members"])
        if key not in best or c["ratio"] > best[key]["ratio"]:
            best[key] = c
    from delay_stability.ensemble import MAX_CONV_MEMBERS

    goals = []
    for name, goal in GOALS.items():
        got = best[(name, 1, 16)]
        goals.append({"model": name, "members": 16, "threads": 1, "goal": goal, "ratio": got["ratio"],
                      "kernel": got["kernel"], "met": got["ratio"] >= goal,
                      "short_by": None if got["ratio"] >= goal else round(goal / got["ratio"], 2)})
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    record = {
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "what": "ratio = R x (seconds per step of one train.Run) / (seconds per step of one ensemble of R); "
                "float32, batch 64 per member, tau = 4, digits",
        "goals": goals,
        "best": [best[k] for k in sorted(best)],
        "cases": cases,
        "torch_compile": compiled,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "uptime": uptime,
        "note": "the machine may be shared: read the load averages beside the ratios; "
                "with 2 threads under load OpenMP's threads wait on each other and a single run's step "
                "slows down by an order of magnitude, so the 2-thread ratios measure the contention more "
                "than the engine: read the 1-thread ones",
        "engine": {"default_kernel": "stacked (auto)", "max_conv_members": MAX_CONV_MEMBERS,
                   "why": "convolutional members train in batches of at most max_conv_members: R = 64 stacked "
                          "cnn_digits ran at or below one by one with 1 thread; an ensemble of 64 runs as 4 of 16"},
        "why_goals_are_missed": "per step the work of R members is R times one member's: the batched kernels save the per-step overhead (Python, dispatch, the optimizer loop), not arithmetic. A single cnn_digits / resnet_digits step is ~40-70 ms here, mostly convolution arithmetic, and grouped convolutions over R members repeat it R times, so the ratio stays near 1-3x; the MLP's stacked step is bound by the batched matrix products and the (R, P) update's memory traffic. Under this load (see load_average) the ratios move by about 2x between runs.",
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)
    write_table(record, table)
    print(json.dumps(goals, indent=1))


if __name__ == "__main__":
    main()
