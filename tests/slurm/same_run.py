"""Whether a run folder built under SLURM (interrupted and resumed) ended as an uninterrupted run.

    python tests/slurm/same_run.py RUN_DIR REFERENCE_DIR

Compares final.pt (every tensor of the weights and of the optimizer state, with torch.equal; the
optimizer's schedule position, RNG and staleness counts; the epoch and step counters) and metrics.csv (every column except `seconds`, as written), and prints
run.json's "resumed" list. Exit status 0 when equal, 1 (with the first difference) otherwise.
"""

import csv
import json
import sys
from pathlib import Path

import torch

from delay_stability.train import load_checkpoint


def tensors(obj, prefix=""):
    """(path, tensor) of every tensor inside nested dicts, lists and tuples."""
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from tensors(obj[k], f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors(v, f"{prefix}[{i}]")


def metrics(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def compare(run, ref):
    a, b = load_checkpoint(str(run / "final.pt")), load_checkpoint(str(ref / "final.pt"))
    for key in ("epoch", "step"):
        if a[key] != b[key]:
            return f"final.pt {key}: {a[key]} != {b[key]} (reference)"
    for key in ("model", "optimizer"):
        ta, tb = list(tensors(a[key])), list(tensors(b[key]))
        if [p for p, _ in ta] != [p for p, _ in tb]:
            return f"final.pt {key}: different entries"
        if not ta and key == "model":
            return f"final.pt {key}: no tensors"
        for (p, x), (_, y) in zip(ta, tb):
            if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
                return f"final.pt {key}{p} differs from the reference"
    # the optimizer's schedule position, RNG and staleness counts (final.pt keeps no in-flight buffers)
    plain = lambda d: {k: v for k, v in d.items() if not torch.is_tensor(v)}  # noqa: E731
    if plain(a["optimizer"]["delayed"]) != plain(b["optimizer"]["delayed"]):
        return "final.pt optimizer state (schedule position, RNG, staleness counts) differs from the reference"
    ma, mb = metrics(run / "metrics.csv"), metrics(ref / "metrics.csv")
    if len(ma) != len(mb):
        return f"metrics.csv: {len(ma)} rows, the reference has {len(mb)}"
    for i, (x, y) in enumerate(zip(ma, mb)):
        if x != y:
            return f"metrics.csv row {i} (epoch {x.get('epoch')}) differs: {x} != {y}"
    return None


def main(argv):
    run, ref = Path(argv[0]), Path(argv[1])
    resumed = json.loads((run / "run.json").read_text())["resumed"]
    print(f"resumed: {json.dumps(resumed)}")
    problem = compare(run, ref)
    if problem:
        print(f"NOT EQUAL: {problem}")
        return 1
    ckpt = load_checkpoint(str(run / "final.pt"))
    print(f"equal: final.pt ({ckpt['epoch']} epochs; weights and optimizer state) and metrics.csv "
          f"({len(metrics(run / 'metrics.csv'))} rows, without seconds)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
