"""Benchmark of DelayedSGD -> benchmarks/results/asgd.json.

Time per training step (forward, backward, optimizer step) with DelayedSGD(delay=32) against
torch.optim.SGD on the same model, data and learning rate, as a ratio measured in one process with
the two optimizers alternating in short blocks (the median of the block-pair ratios; the machine
may be shared), plus the optimizer step alone:

* CPU, the quick scale: digits MLP 64-64-10 (tanh), float64, full batch (1,297 images), squared loss.
* CUDA (when present): VGG-11 with BatchNorm on CIFAR-shaped data held on the device, batch 128,
  float32; also the epoch time of VGG-11 at batch 128 and 1024 (50,000 images on the device, with
  device-side crop+flip augmentation), through the training engine's own batch iterator.

Run: ``python benchmarks/asgd.py [--cpu-only] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

from delay_stability.asgd import DelayedSGD
from delay_stability.data import NORMALISATION, TensorDataset, load_dataset
from delay_stability.models import build_model, count_parameters
from delay_stability.train import build_loss

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "asgd.json")
DELAY = 32


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_optimizer(kind, model, lr):
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr)
    return DelayedSGD(model.parameters(), lr=lr, delay=DELAY)


def time_steps(model, opt, loss_fn, x, y, steps, device):
    """Seconds per training step over `steps` steps (forward + backward + optimizer step)."""
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return (time.perf_counter() - t) / steps


def time_optimizer_step(model, opt, steps, device):
    """Seconds per optimizer step alone (gradients already in place)."""
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        opt.step()
    _sync(device)
    return (time.perf_counter() - t) / steps


def compare(build, loss_fn, x, y, lr, device, steps, blocks, warmup):
    """SGD vs DelayedSGD(delay=32), alternating blocks; medians of per-step times."""
    runs = {}
    for kind in ("sgd", "delayed"):
        torch.manual_seed(0)
        model = build().to(device)
        opt = make_optimizer(kind, model, lr)
        time_steps(model, opt, loss_fn, x, y, warmup, device)
        runs[kind] = (model, opt)
    times = {"sgd": [], "delayed": []}
    for b in range(blocks):  # alternate, swapping which goes first, so load changes hit both alike
        order = ("sgd", "delayed") if b % 2 == 0 else ("delayed", "sgd")
        for kind in order:
            model, opt = runs[kind]
            times[kind].append(time_steps(model, opt, loss_fn, x, y, steps, device))
    opt_only = {kind: time_optimizer_step(m, o, steps, device) for kind, (m, o) in runs.items()}
    sgd, delayed = statistics.median(times["sgd"]), statistics.median(times["delayed"])
    ratio = statistics.median(d / s for d, s in zip(times["delayed"], times["sgd"]))
    model, opt = runs["delayed"]
    return {
        "parameters": count_parameters(model),
        "delay": DELAY,
        "step_seconds_sgd": sgd,
        "step_seconds_delayed": delayed,
        "ratio_delayed_over_sgd": ratio,
        "extra_time_percent": 100 * (ratio - 1),
        "ratio_of_fastest_blocks": min(times["delayed"]) / min(times["sgd"]),
        "optimizer_step_seconds_sgd": opt_only["sgd"],
        "optimizer_step_seconds_delayed": opt_only["delayed"],
        "delayed_buffer_bytes": opt.buffer_bytes(),
        "blocks": blocks,
        "steps_per_block": steps,
        "block_step_seconds_sgd": times["sgd"],
        "block_step_seconds_delayed": times["delayed"],
    }


def cpu_case(threads):
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    spec = {"dataset": "digits", "dtype": "float64", "loss": "mse"}
    data = load_dataset(spec, device)

    def build():
        return build_model("mlp", hidden=[64], activation="tanh").double()

    result = compare(build, build_loss(spec), data.train_x, data.train_y, 0.02, device, steps=20, blocks=41, warmup=40)
    result.update(case="digits MLP 64-64-10 tanh, float64, full batch (1297), mse", device="cpu", threads=threads)
    return result


def cifar_data(n, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    mean, std = NORMALISATION["cifar10"]
    x = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    y = torch.randint(0, 10, (n,), generator=g)
    black = tuple(-m / s for m, s in zip(mean, std))
    return TensorDataset("cifar10", 10, x.to(device), y.to(device), x[:1000].to(device), y[:1000].to(device),
                         augment=True, flip=True, pad_value=black)


def gpu_cases(device=torch.device("cuda"), images=50_000, steps=50, blocks=21, warmup=30):
    torch.backends.cudnn.benchmark = True
    loss_fn = build_loss({"loss": "cross_entropy"})
    data = cifar_data(images, device)
    x, y = data.train_x[:128], data.train_y[:128]
    step = compare(lambda: build_model("vgg11"), loss_fn, x, y, 0.05, device, steps=steps, blocks=blocks, warmup=warmup)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    step.update(case="VGG-11 (BatchNorm), CIFAR-shaped, batch 128, float32", device=name)

    epochs = {}
    for batch in (128, 1024):
        torch.manual_seed(0)
        model = build_model("vgg11").to(device)
        opt = DelayedSGD(model.parameters(), lr=0.05, delay=DELAY)
        g = torch.Generator().manual_seed(0)
        times = []
        for epoch in range(3):  # the first epoch includes cudnn autotuning
            _sync(device)
            t = time.perf_counter()
            for xb, yb in data.train_batches(batch, shuffle=True, generator=g):
                loss = loss_fn(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            _sync(device)
            times.append(time.perf_counter() - t)
        epochs[str(batch)] = {"epoch_seconds": min(times[1:]), "all_epochs_seconds": times}
    return {"vgg11_step": step, "vgg11_epoch_time": {"images": images, "augment": "crop pad 4 + flip, on device",
                                                    "optimizer": f"DelayedSGD(delay={DELAY})", "by_batch": epochs}}


def write_atomic(path, record):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    record = {
        "benchmark": "DelayedSGD(delay=32) vs torch.optim.SGD, time per training step",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_case(args.threads),
    }
    if torch.cuda.is_available() and not args.cpu_only:
        record["cuda"] = gpu_cases()
    else:
        record["cuda"] = None
    write_atomic(args.out, record)
    cpu = record["cpu"]
    print(f"CPU digits MLP: {1e6 * cpu['step_seconds_delayed']:.0f} us/step delayed vs {1e6 * cpu['step_seconds_sgd']:.0f} "
          f"us/step SGD, ratio {cpu['ratio_delayed_over_sgd']:.3f}")
    if record["cuda"]:
        s = record["cuda"]["vgg11_step"]
        print(f"GPU VGG-11 b128: ratio {s['ratio_delayed_over_sgd']:.4f} ({s['extra_time_percent']:+.2f}%)")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
