"""Benchmark of the ResNet-50 training step (figs. 5, 9) -> benchmarks/results/imagenet.json.

Images per second of one A-SGD training step of torchvision's ResNet-50 (forward, backward,
``DelayedSGD`` with shifted momentum and delay ``--tau``: the fresh gradient goes into its slot,
the landing slot's velocity is applied), exactly as ``train.Run`` does it, with

* ``memory``: one batch of random images already on the device (the step alone);
* ``loader``: the real input path, ``data.FolderDataset`` on an ImageFolder tree of JPEG files
  written for the benchmark (decoding, RandomResizedCrop, flip, normalisation in ``--workers``
  persistent DataLoader workers, pinned memory on CUDA), the step included.

On the CPU the images are small (``--image-size``, default 64) and the steps few, so that the
benchmark ends in a minute or two; on CUDA it also times the ``performance`` settings
(channels_last, bf16 autocast, torch.compile). The last block of the JSON is the *estimate* of the
GPU-hours of figures 5, 9 and 11 at paper scale from an *assumed* GPU throughput (stated there):
no GPU number here is measured unless ``device`` says cuda.

Run: ``python benchmarks/imagenet.py [--steps 4] [--batch 8] [--image-size 64] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch

from delay_stability.asgd import DelayedSGD
from delay_stability.data import load_dataset
from delay_stability.models import build_model

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "imagenet.json")

#: The assumption behind the GPU-hours estimate (not a measurement): ResNet-50 training at 224 px,
#: bf16 autocast + channels_last, batch 256, on one A100-class GPU, and ResNet-44 on CIFAR-10 at batch 128.
ASSUMED_IMAGES_PER_SECOND = {"resnet50_224px": 2500.0, "resnet44_cifar": 10000.0}
IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000
CIFAR_TRAIN, CIFAR_VAL = 50_000, 10_000


def write_tree(root: str, classes: int, per_class: int, side: int) -> str:
    """An ImageFolder tree of real JPEG files (random colours) under ``root``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = os.path.join(root, "train", f"n{c:08d}")
        os.makedirs(folder, exist_ok=True)
        os.makedirs(os.path.join(root, "val", f"n{c:08d}"), exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
            Image.fromarray(image, "RGB").save(os.path.join(folder, f"{i}.JPEG"), quality=90)
        Image.fromarray(image, "RGB").save(os.path.join(root, "val", f"n{c:08d}", "0.JPEG"), quality=90)
    return root


class Step:
    """One training step of train.Run: forward (optionally bf16 autocast), loss, backward, DelayedSGD."""

    def __init__(self, device, tau, channels_last=False, bf16=False, compile=False):
        torch.manual_seed(0)
        self.model = build_model("resnet50", num_classes=1000).to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if compile else self.model
        self.opt = DelayedSGD(self.model.parameters(), lr=0.1, delay=tau, momentum=0.9, variant="shifted",
                              weight_decay=1e-4)
        self.device, self.bf16, self.channels_last = device, bf16, channels_last

    def __call__(self, x, y):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.forward(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_memory(step, batch, size, steps, device) -> dict:
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    step(x, y)  # warm-up (and compilation)
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    _sync(device)
    seconds = time.perf_counter() - t
    return {"images_per_second": batch * steps / seconds, "seconds_per_step": seconds / steps}


def time_loader(step, root, batch, size, steps, workers, device) -> dict:
    spec = {"dataset": "imagenet", "dataset_args": {"root": root, "workers": workers, "image_size": size},
            "augment": True}
    data = load_dataset(spec, device)
    data.channels_last = step.channels_last
    g = torch.Generator().manual_seed(0)
    batches = data.train_batches(batch, shuffle=True, generator=g)
    x, y = next(batches)  # starts the workers; warm-up step
    step(x, y)
    _sync(device)
    t = time.perf_counter()
    n = 0
    for _ in range(steps):
        try:
            x, y = next(batches)
        except StopIteration:
            batches = data.train_batches(batch, shuffle=True, generator=g)
            x, y = next(batches)
        step(x, y)
        n += len(y)
    _sync(device)
    seconds = time.perf_counter() - t
    return {"images_per_second": n / seconds, "seconds_per_step": seconds / steps}


def gpu_hours_estimate() -> dict:
    """GPU-hours of the paper-scale figures from ASSUMED_IMAGES_PER_SECOND (an estimate, not measured):
    images processed = epochs x (train set + val set + ...) per run, as config.yaml's paper block runs them
    (one extra pass over the training set at the start: the initial loss L0)."""
    r50 = ASSUMED_IMAGES_PER_SECOND["resnet50_224px"]
    r44 = ASSUMED_IMAGES_PER_SECOND["resnet44_cifar"]
    # a forward-only image costs about 1/3 of a training image
    per_imagenet_run = (90 * IMAGENET_TRAIN + (IMAGENET_TRAIN + 91 * IMAGENET_VAL) / 3) / r50 / 3600
    per_cifar_run = (1000 * CIFAR_TRAIN + (CIFAR_TRAIN + 1001 * CIFAR_VAL) / 3) / r44 / 3600
    return {
        "kind": "estimate from an assumed throughput, not a measurement",
        "assumed_images_per_second": ASSUMED_IMAGES_PER_SECOND,
        "per_run_gpu_hours": {"imagenet_resnet50_90_epochs": round(per_imagenet_run, 1),
                              "cifar10_resnet44_1000_epochs": round(per_cifar_run, 1)},
        "figures_gpu_hours": {"fig5 (5 runs)": round(5 * per_imagenet_run, 1),
                              "fig9 (2 runs)": round(2 * per_imagenet_run, 1),
                              "fig11 (3 runs)": round(3 * per_cifar_run, 1)},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=None, help="default 64 on the CPU, 224 on CUDA")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tau", type=int, default=4)
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = args.image_size or (224 if device.type == "cuda" else 64)
    settings = [("fp32", {})]
    if device.type == "cuda":
        settings += [("channels_last+bf16", {"channels_last": True, "bf16": True}),
                     ("channels_last+bf16+compile", {"channels_last": True, "bf16": True, "compile": True})]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_tree(tmp, classes=8, per_class=max(2, args.batch * (args.steps + 1) // 8 + 1),
                          side=int(size * 1.25))
        for name, flags in settings:
            step = Step(device, args.tau, **flags)
            row = {"setting": name, "memory": time_memory(step, args.batch, size, args.steps, device),
                   "loader": time_loader(step, root, args.batch, size, args.steps, args.workers, device)}
            results.append(row)
            print(f"{name:<28} in memory {row['memory']['images_per_second']:8.1f} img/s   "
                  f"real loader {row['loader']['images_per_second']:8.1f} img/s", flush=True)
            del step
    record = {
        "benchmark": "ResNet-50 A-SGD training step (shifted momentum), images per second",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "image_size": size, "batch": args.batch, "steps": args.steps, "loader_workers": args.workers,
        "tau": args.tau,
        "results": results,
        "gpu_measured": device.type == "cuda",
        "gpu_hours": gpu_hours_estimate(),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
