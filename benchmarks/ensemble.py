"""Benchmark of the ensemble engine -> benchmarks/results/ensemble.json.

R = 16 members with different lr and seeds, E = 3 epochs, in one process: the wall time of R
sequential ``train.run_training`` calls against one ``ensemble.run_ensemble`` of the same R specs
(each into fresh folders, so both include their set-up and file writes), for

* the quick figure-3 model (config.yaml quick.generalization.train): cnn_digits on digits, batch 64,
  cross-entropy, float32;
* an MLP 64-128-128-10 (ReLU) on digits, batch 64, float32;

with torch's threads at 1 and at the machine's default. Speedup = single_seconds / ensemble_seconds.

Run: ``python benchmarks/ensemble.py [--members 16] [--epochs 3] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

import torch

from delay_stability.ensemble import run_ensemble
from delay_stability.train import run_training

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "ensemble.json")
LRS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.03, 0.07)
MODELS = {
    "cnn_digits (quick fig3)": {"model": "cnn_digits", "model_args": {"batchnorm": False}},
    "mlp 128-128": {"model": "mlp", "model_args": {"hidden": [128, 128], "activation": "relu"}},
}


def specs_for(model: dict, members: int, epochs: int, threads: int, tau: int) -> list[dict]:
    base = dict(model, dataset="digits", loss="cross_entropy", dtype="float32", device="cpu", threads=threads,
                epochs=epochs, batch_size=64, eval_every=5, optimizer={"delay": tau})
    return [dict(base, lr=LRS[r % len(LRS)], seed=r) for r in range(members)]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--tau", type=int, default=4)
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    cases = []
    root = tempfile.mkdtemp(prefix="ensemble-bench-")
    try:
        for threads in sorted({1, default_threads}):
            for name, model in MODELS.items():
                specs = specs_for(model, args.members, args.epochs, threads, args.tau)
                # warm-up (imports, dataset cache, first kernels), not timed
                run_ensemble(specs[:2], [os.path.join(root, "warm", str(i)) for i in range(2)])
                run_training(specs[0], os.path.join(root, "warm", "single"))
                tag = f"{name}-{threads}".replace(" ", "_")
                single = timed(lambda: [run_training(s, os.path.join(root, tag, f"s{i}")) for i, s in enumerate(specs)])
                ensemble = timed(lambda: run_ensemble(specs, [os.path.join(root, tag, f"e{i}") for i in range(len(specs))]))
                case = {
                    "model": name, "threads": threads, "members": args.members, "epochs": args.epochs,
                    "batch_size": 64, "tau": args.tau, "dtype": "float32",
                    "single_seconds": round(single, 3), "ensemble_seconds": round(ensemble, 3),
                    "speedup": round(single / ensemble, 2),
                }
                print(json.dumps(case), flush=True)
                cases.append(case)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    record = {
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "members": args.members,
        "speedup": min(c["speedup"] for c in cases),
        "speedup_note": "the smallest speedup over the cases (models x thread counts)",
        "cases": cases,
        "torch": torch.__version__,
        "cpu_threads": default_threads,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)
    print(json.dumps({k: record[k] for k in ("members", "speedup", "cpu_threads")}))


if __name__ == "__main__":
    main()
