"""Smoke mode: every paper-scale target end to end, on tiny data, in minutes on a CPU.

The workflow uses this module only when the config says ``smoke: true``. With smoke off nothing
here runs and nothing changes: the paper block, its specs and its result files are exactly what
they are without this module. Everything here is a pure function of its arguments (the input
block is never mutated); only ``write_datasets`` touches the disk, and only under its ``root``.

What smoke mode writes (``write_datasets(root)``), in the exact on-disk formats the loaders of
``delay_stability.data`` read, deterministic from ``seed`` (same bytes on every call):

    <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte   raw IDX files (28x28 uint8)
    <root>/cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta    python pickles with
          CIFAR's keys (data: N x 3072 uint8, labels, filenames, batch_label; label_names, ...)
    <root>/cifar-100-python/train, test, meta                     (fine_labels, coarse_labels, ...)
    <root>/imagenet/{train,val}/<wnid>/*.JPEG                     an ImageFolder tree, 10 classes

with N_TRAIN training and N_VAL validation images per dataset (images = a per-class template plus
noise, so that a few steps can lower the loss). torchvision's CIFAR classes check the md5 of every
file against the real dataset's; tiny files cannot match, so CIFAR loads only when data.py offers a
way to skip that check: ``dataset_args.verify`` (default true) in spec.DATASET_ARGS for cifar10 and
cifar100, and in data._torchvision_set, when it is false, a subclass of the torchvision class whose
train_list, test_list and meta carry md5 None (torchvision's check_integrity then only checks that
the file exists). ``smoke_spec`` sets ``verify: false`` whenever spec.DATASET_ARGS knows that key.

What smoke mode changes in a paper-scale training spec (``smoke_spec``), and nothing else:

    epochs              min(epochs, EPOCHS)
    batch_size          min(batch_size, BATCH_SIZE); 0 (full batch) stays 0
    eval_every          1
    checkpoint_every    EPOCHS: no rolling checkpoint inside a smoke run (it would hold the paper's
                        in-flight gradients, 33 VGG-11 copies at tau = 32, written and deleted in
                        every run); final.pt is written as at paper scale, and resuming from a
                        rolling checkpoint is tested at the quick scale (tests/test_train.py,
                        tests/test_faults.py)
    lr_schedule         warm-up and milestones scaled from the spec's epochs into 1..EPOCHS-1
                        (so warm-up and every decay still run); kind and gamma kept
    dataset_args        root: the smoke data (imagenet: <root>/imagenet, image_size IMAGE_SIZE,
                        workers 0), download: false, train_subset/val_subset clamped to the data
    stop                steady-state and settle windows min(window, EPOCHS); thresholds kept

Model, model_args, loss, dtype, optimizer (delay, momentum, variant, weight decay, ...), lr,
augmentation, seeds and every stop threshold are the paper's. ``smoke_config`` applies
``smoke_spec`` to every training block of the ``paper:`` block and shrinks its grids (two taus,
two learning rates, one seed, one curve tau with two factors, searches of a few probes, tiny
epoch budgets, sharpness iterations capped; imagenet and spikes: delays and workers at most
MAX_DELAY, one seed); every key the config schema requires stays.
"""

from __future__ import annotations

import copy
import math
import os

from ..registry import experiment_of_block
from ..spec import DATASET_ARGS

#: Epochs of every smoke training run (and the budget of every search probe).
EPOCHS = 2
#: Images per dataset: training and validation split.
N_TRAIN = 24
N_VAL = 12
#: Largest minibatch (N_TRAIN / BATCH_SIZE -> 3 steps per epoch; the paper's networks on CIFAR-sized
#: images cost ~0.02 s per image and step on one CPU thread, so the images are what a smoke build pays for).
BATCH_SIZE = 8
#: Side of the ImageNet smoke images the loader crops to (dataset_args.image_size).
IMAGE_SIZE = 32
#: Classes of the ImageFolder tree and the side of its JPEGs.
IMAGENET_CLASSES = 10
JPEG_SIZE = (40, 36)
#: Caps of the iterative solvers (sharpness, polish, tracking) in smoke mode.
MAX_ITER = 10
#: Grids: points kept of each axis.
GRID_POINTS = 2

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ================================================================ tiny datasets in the real formats


def _write_bytes(path: str, payload: bytes) -> None:
    """Write ``payload`` atomically, and not at all when the file already holds exactly it (so
    that rerunning leaves the files, and their modification times, alone)."""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            if f.read() == payload:
                return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(payload)
    os.replace(tmp, path)


def _splits(rng, n_train: int, n_val: int, shape: tuple, num_classes: int, shuffle: bool = True):
    """(train, val) pairs (uint8 images of ``shape``, int64 labels) sharing one fixed random
    template per class; each image is 0.6 template + 0.4 noise. Labels go through the classes in
    turn (every class appears once n >= num_classes), shuffled unless ``shuffle`` is false."""
    import numpy as np

    templates = rng.integers(0, 256, (num_classes, *shape))
    out = []
    for n in (n_train, n_val):
        labels = np.arange(n) % num_classes
        if shuffle:
            rng.shuffle(labels)
        noise = rng.integers(0, 256, (n, *shape))
        images = (0.6 * templates[labels] + 0.4 * noise).round().clip(0, 255).astype(np.uint8)
        out.append((images, labels.astype(np.int64)))
    return out


def _idx(array) -> bytes:
    """IDX: magic (0, 0, 0x08 = uint8, ndim), big-endian int32 sizes, then the bytes."""
    import numpy as np

    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _pickle(obj) -> bytes:
    import pickle

    return pickle.dumps(obj, protocol=2)


def _write_mnist(root: str, rng, n_train: int, n_val: int) -> None:
    raw = os.path.join(root, "MNIST", "raw")
    for prefix, (images, labels) in zip(("train", "t10k"), _splits(rng, n_train, n_val, (28, 28), 10)):
        _write_bytes(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), _idx(images))
        _write_bytes(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), _idx(labels))


def _cifar_entry(images, labels, batch_label: str, hundred: bool) -> dict:
    n = len(labels)
    entry = {
        "batch_label": batch_label,
        "data": images.reshape(n, 3072),  # row-major: 1024 red, 1024 green, 1024 blue values
        "filenames": [f"smoke_{batch_label.replace(' ', '_')}_{i:05d}.png" for i in range(n)],
    }
    if hundred:
        entry["fine_labels"] = labels.tolist()
        entry["coarse_labels"] = (labels // 5).tolist()
    else:
        entry["labels"] = labels.tolist()
    return entry


def _write_cifar10(root: str, rng, n_train: int, n_val: int) -> None:
    import numpy as np

    folder = os.path.join(root, "cifar-10-batches-py")
    (images, labels), (val_images, val_labels) = _splits(rng, n_train, n_val, (3, 32, 32), 10)
    batches = np.array_split(np.arange(n_train), 5)  # data_batch_1..5, sizes differing by at most 1
    for i, idx in enumerate(batches, start=1):
        entry = _cifar_entry(images[idx], labels[idx], f"training batch {i} of 5", hundred=False)
        _write_bytes(os.path.join(folder, f"data_batch_{i}"), _pickle(entry))
    test = _cifar_entry(val_images, val_labels, "testing batch 1 of 1", hundred=False)
    _write_bytes(os.path.join(folder, "test_batch"), _pickle(test))
    meta = {"num_cases_per_batch": len(batches[0]), "label_names": list(CIFAR10_NAMES), "num_vis": 3072}
    _write_bytes(os.path.join(folder, "batches.meta"), _pickle(meta))


def _write_cifar100(root: str, rng, n_train: int, n_val: int) -> None:
    folder = os.path.join(root, "cifar-100-python")
    (images, labels), (val_images, val_labels) = _splits(rng, n_train, n_val, (3, 32, 32), 100)
    _write_bytes(os.path.join(folder, "train"), _pickle(_cifar_entry(images, labels, "training batch 1 of 1", True)))
    _write_bytes(os.path.join(folder, "test"), _pickle(_cifar_entry(val_images, val_labels, "testing batch 1 of 1", True)))
    meta = {"fine_label_names": [f"class_{i:02d}" for i in range(100)],
            "coarse_label_names": [f"superclass_{i:02d}" for i in range(20)]}
    _write_bytes(os.path.join(folder, "meta"), _pickle(meta))


def _write_imagenet(root: str, rng, n_train: int, n_val: int) -> None:
    import io

    from PIL import Image

    width, height = JPEG_SIZE
    # labels in turn, not shuffled: the file names are the same for every seed
    splits = _splits(rng, n_train, n_val, (height, width, 3), IMAGENET_CLASSES, shuffle=False)
    for split, (images, labels) in zip(("train", "val"), splits):
        for i, (image, label) in enumerate(zip(images, labels)):
            buf = io.BytesIO()
            Image.fromarray(image, "RGB").save(buf, format="JPEG", quality=90)
            wnid = f"n{label:08d}"
            _write_bytes(os.path.join(root, split, wnid, f"{wnid}_{split}_{i:05d}.JPEG"), buf.getvalue())


def dataset_roots(root) -> dict:
    """Dataset name -> the ``dataset_args.root`` of its smoke copy under ``root``."""
    root = os.path.abspath(os.path.expanduser(str(root)))
    return {"mnist": root, "cifar10": root, "cifar100": root, "imagenet": os.path.join(root, "imagenet")}


def write_datasets(root, *, seed: int = 0, n_train: int = N_TRAIN, n_val: int = N_VAL) -> dict:
    """Write tiny MNIST, CIFAR-10, CIFAR-100 and ImageFolder datasets under ``root`` in the real
    on-disk formats (see the module docstring); the same bytes on every call with the same
    arguments (files already right are left untouched). ``n_train``/``n_val`` images per split
    (at least 10: every class of MNIST, CIFAR-10 and the ImageFolder tree then appears in
    training). Files it does not write are left alone. Returns ``dataset_roots(root)``."""
    import numpy as np

    if not (isinstance(n_train, int) and isinstance(n_val, int) and n_train >= 10 and n_val >= 1):
        raise ValueError(f"write_datasets: need n_train >= 10 and n_val >= 1, got {n_train}, {n_val}")
    roots = dataset_roots(root)
    writers = (("mnist", _write_mnist), ("cifar10", _write_cifar10), ("cifar100", _write_cifar100),
               ("imagenet", _write_imagenet))
    for i, (name, write) in enumerate(writers):
        write(roots[name], np.random.default_rng([seed, i]), n_train, n_val)
    return roots


# ================================================================ specs


def _scaled_epoch(value, reference, epochs: int) -> int:
    """An epoch count of a schedule (a milestone, a warm-up) moved from a run of ``reference``
    epochs into one of ``epochs``: at least 1, and before the last epoch when there is one."""
    scaled = int(math.floor(float(value) * epochs / float(reference) + 0.5))
    return min(max(1, scaled), max(1, epochs - 1))


def _shrink_epochs(value, epochs: int):
    try:
        return min(int(value), epochs)
    except (TypeError, ValueError):
        return value  # not a number: left for validate_spec to report


def smoke_spec(spec: dict, data_root, *, epochs: int = EPOCHS, batch_size: int = BATCH_SIZE,
               n_train: int = N_TRAIN, n_val: int = N_VAL) -> dict:
    """The smoke version of one paper-scale training spec (a new dict; see the module docstring).

    Also takes a partial spec (an override block, e.g. ``stability.continuation``, or ``eos.train``
    with no lr or epochs): only the keys present are changed, plus eval_every (set to 1),
    checkpoint_every (set to ``epochs``) and the dataset's arguments when the spec names its model
    or dataset."""
    out = copy.deepcopy(dict(spec))
    full = "model" in out or "dataset" in out
    reference = out.get("epochs")
    if "epochs" in out:
        out["epochs"] = _shrink_epochs(out["epochs"], epochs)
    if isinstance(out.get("batch_size"), int) and not isinstance(out["batch_size"], bool) and out["batch_size"] > 0:
        out["batch_size"] = min(out["batch_size"], batch_size)
    for key, value in (("eval_every", 1), ("checkpoint_every", epochs)):
        if full or key in out:
            out[key] = value
    schedule = out.get("lr_schedule")
    if isinstance(schedule, dict):
        milestones = schedule.get("milestones")
        numbers = [m for m in milestones if isinstance(m, (int, float))] if isinstance(milestones, list) else []
        ref = reference if isinstance(reference, (int, float)) and reference > 0 else max(numbers, default=0) + 1
        if isinstance(milestones, list) and len(numbers) == len(milestones):
            schedule["milestones"] = [_scaled_epoch(m, ref, epochs) for m in milestones]
        warmup = schedule.get("warmup_epochs")
        if isinstance(warmup, (int, float)) and not isinstance(warmup, bool) and warmup > 0:
            schedule["warmup_epochs"] = _scaled_epoch(warmup, ref, epochs)
    name = out.get("dataset", "digits" if "model" in out else None)
    if (name in DATASET_ARGS and name != "digits") or isinstance(out.get("dataset_args"), dict):
        out["dataset_args"] = _smoke_dataset_args(name, out.get("dataset_args"), data_root, n_train, n_val)
    stop = out.get("stop")
    if isinstance(stop, dict):
        for rule, default in (("steady_state", 50), ("settle", 1)):
            if isinstance(stop.get(rule), dict):
                window = stop[rule].get("window", default)
                if isinstance(window, int) and not isinstance(window, bool):
                    stop[rule]["window"] = min(window, epochs)
    return out


def _smoke_dataset_args(name, args, data_root, n_train: int, n_val: int) -> dict:
    args = dict(args or {})
    if "data_dir" in args:
        args["root"] = args.pop("data_dir")
    for key, n in (("train_subset", n_train), ("val_subset", n_val)):
        if isinstance(args.get(key), int) and not isinstance(args[key], bool):
            args[key] = min(args[key], n)
    if name == "imagenet":
        args.update(root=dataset_roots(data_root)["imagenet"], workers=0, image_size=IMAGE_SIZE)
    elif name in ("mnist", "cifar10", "cifar100"):
        args.update(root=dataset_roots(data_root)[name], download=False)
        if "verify" in DATASET_ARGS[name]:  # a loader that can skip the md5 check of the real files
            args["verify"] = False
    return args


# ================================================================ the whole paper block


def _first(values, n: int = GRID_POINTS) -> list:
    return list(values)[:n]


def smoke_config(paper_block: dict, data_root, *, epochs: int = EPOCHS, batch_size: int = BATCH_SIZE,
                 n_train: int = N_TRAIN, n_val: int = N_VAL) -> dict:
    """The smoke version of a whole ``paper:`` experiment block (a new dict; the input is never
    mutated): every training spec through ``smoke_spec``, every grid a few points, every epoch
    budget ``epochs``, every search a few probes; every key the config schema requires is kept."""
    sizes = dict(epochs=epochs, batch_size=batch_size, n_train=n_train, n_val=n_val)

    def spec(s):
        return smoke_spec(s, data_root, **sizes)

    out = copy.deepcopy(paper_block)
    for name, block in out.items():
        if not isinstance(block, dict):
            continue
        experiment = experiment_of_block(name)
        if experiment is not None and experiment.smoke is not None:
            experiment.role("smoke")(block, spec, sizes)
        elif isinstance(block.get("train"), dict):  # a block of no experiment that holds a spec
            block["train"] = spec(block["train"])
    return out


# Each experiment's shrink (its registry role ``smoke``): shrink(block, spec, sizes) changes one of
# its config blocks in place; ``spec`` is smoke_spec with the sizes, ``sizes`` the keyword sizes of
# smoke_config (epochs, batch_size, n_train, n_val).


def shrink_mitigations(block: dict, spec, sizes: dict) -> None:
    """Searches from the (smoke) stability minimum: a few delays, and the first rule and the last
    two (plain, and the rules with per-slot weights or a predicted point)."""
    block["taus"] = _first(block["taus"])
    labels = list(block["rules"])
    block["rules"] = {k: block["rules"][k] for k in dict.fromkeys(labels[:1] + labels[-2:])}


def shrink_random_staleness(block: dict, spec, sizes: dict) -> None:
    """Two models (the first i.i.d. law and the first worker model), one seed, a short Monte Carlo."""
    labels = list(block["models"])
    iid = [k for k in labels if "delay" in block["models"][k]][:1]
    workers = [k for k in labels if "workers" in block["models"][k]][:1]
    block["models"] = {k: block["models"][k] for k in iid + workers}
    block["seeds"] = block["seeds"][:1]
    block["lyapunov"] = {**block.get("lyapunov", {}), "chains": 8, "steps": 400, "burn": 50}


def shrink_table1(block: dict, spec, sizes: dict) -> None:
    """The first two networks (one per dataset at paper scale): 10 arms, not 20."""
    block["networks"] = block.get("networks", [])[:2]
    for net in block["networks"]:
        net["train"] = spec(net["train"])
        if isinstance(net.get("large_batch"), int):
            net["large_batch"] = min(net["large_batch"], 2 * sizes["batch_size"])


def shrink_momentum(block: dict, spec, sizes: dict) -> None:
    """Two worker counts, two momenta and the fixed one, one seed, one lr either side (the decade
    grid: one decade at two offsets); its theory options stay (results/theory/ is shared by every scale)."""
    block["train"] = spec(block["train"])
    block["workers"] = _first(block["workers"])
    fixed = block.get("fixed_momentum", 0.9)
    block["momenta"] = sorted({*_first(block["momenta"]), fixed})
    block["seeds"] = _first(block.get("seeds") or [0], 1)
    if isinstance(block.get("lr_grid"), dict):
        block["lr_grid"].update(below=1, above=1)
    if isinstance(block.get("decade_grid"), dict):   # one decade, at most two offsets, two worker counts
        g = block["decade_grid"]
        g.update(decades=1, offsets=min(int(g.get("offsets", 4)), 2), workers=_first(g.get("workers") or block["workers"]))


def shrink_real_workers(block: dict, spec, sizes: dict) -> None:
    """Real processes: one setting, a few updates."""
    block.update(workers=_first(block["workers"], 1), jitters=_first(block.get("jitters", [0.0]), 1),
                 repeats=1, pilot={**block.get("pilot", {}), "updates": 10}, updates=10)


def shrink_delayed(block: dict, spec, sizes: dict) -> None:
    """imagenet, spikes: the training spec, and delays at most MAX_DELAY, one seed."""
    block["train"] = spec(block["train"])
    _smoke_delays(block)


#: Largest delay of a smoke run (ResNet-50 keeps delay + 1 gradient copies in flight).
MAX_DELAY = 2


def _smoke_delays(block: dict) -> None:
    """imagenet, spikes: delays (and imagenet's workers) at most MAX_DELAY, one seed per figure."""
    if isinstance(block.get("tau"), int):
        block["tau"] = min(block["tau"], MAX_DELAY)
    if isinstance(block.get("workers"), int):
        block["workers"] = min(block["workers"], MAX_DELAY)
    if isinstance(block.get("seeds"), list):
        block["seeds"] = _first(block["seeds"], 1)
    for fig in ("fig5", "fig9"):
        sub = block.get(fig)
        if not isinstance(sub, dict):
            continue
        if isinstance(sub.get("seeds"), list):
            sub["seeds"] = _first(sub["seeds"], 1)
        for run in sub.get("runs") or sub.get("delays") or []:
            for key in ("tau", "delay", "workers"):
                if isinstance(run.get(key), int):
                    run[key] = min(run[key], MAX_DELAY)
                elif isinstance(run.get(key), dict) and isinstance(run[key].get("mean"), (int, float)):
                    run[key]["mean"] = min(run[key]["mean"], MAX_DELAY)


def shrink_stability(block: dict, spec, sizes: dict) -> None:
    """Two delays, solvers capped, searches of a few probes, one curve delay with two factors."""
    epochs, n_train = sizes["epochs"], sizes["n_train"]
    block["baseline"] = spec(block["baseline"])
    if isinstance(block.get("continuation"), dict):
        block["continuation"] = spec(block["continuation"])
    block["taus"] = _first(block["taus"])
    for key in ("polish", "sharpness"):
        if isinstance(block.get(key), dict) and isinstance(block[key].get("max_iter"), int):
            block[key]["max_iter"] = min(block[key]["max_iter"], MAX_ITER)
    sharpness = block.get("sharpness") or {}
    if isinstance(sharpness.get("subset"), int):
        sharpness["subset"] = min(sharpness["subset"], n_train)
    search = block["search"]
    search["base_epochs"] = min(search["base_epochs"], epochs)
    search["epochs_per_tau"] = min(search["epochs_per_tau"], 1)
    search["max_epochs"] = min(search["max_epochs"], 2 * epochs)
    search["rel_tol"] = max(search["rel_tol"], 0.9)  # a bisection of one or two probes
    # the downward scan reaches alpha_min in two steps (so a search has at most ~6 probes)
    ratio = float(search["alpha_max"]) / float(search["alpha_min"])
    if ratio > 1:
        search["scan_factor"] = max(float(search.get("scan_factor", 2.0)), math.sqrt(ratio) * (1 - 1e-9))
    curves = block.get("curves")
    if isinstance(curves, dict):
        tau = next((t for t in curves["taus"] if t in block["taus"]), block["taus"][0])
        curves.update(taus=[tau], lr_factors=_first(curves["lr_factors"]), epochs=min(curves["epochs"], epochs))
        fig12 = (block.get("plots") or {}).get("fig12")
        if isinstance(fig12, dict) and "taus" in fig12:
            fig12["taus"] = [t for t in fig12["taus"] if t == tau] or [tau]


def shrink_eos(block: dict, spec, sizes: dict) -> None:
    """Tracking every step with capped solvers, two learning rates and delays, tiny budgets."""
    epochs = sizes["epochs"]
    block["train"] = spec(block["train"])
    track = block.get("track")
    if isinstance(track, dict):
        track["every"] = 1
        if isinstance(track.get("max_iter"), int):
            track["max_iter"] = min(track["max_iter"], MAX_ITER)
    fixed = block.get("fixed")
    if isinstance(fixed, dict):
        fixed.update(lrs=_first(fixed["lrs"]), taus=_first(fixed["taus"]), epochs=min(fixed["epochs"], epochs))
    scaled = block.get("scaled")
    if isinstance(scaled, dict):
        scaled["burn_in"]["epochs"] = min(scaled["burn_in"]["epochs"], epochs)
        scaled["epochs"] = min(scaled["epochs"], epochs)
        if "epochs_per_tau" in scaled:
            scaled["epochs_per_tau"] = min(scaled["epochs_per_tau"], 1)
        for run in scaled["runs"]:
            run["taus"] = _first(run["taus"])


def shrink_generalization(block: dict, spec, sizes: dict) -> None:
    """Two delays and learning rates, one seed, epoch grids scaled into the smoke budget."""
    epochs = sizes["epochs"]
    reference = block["train"].get("epochs")
    block["train"] = spec(block["train"])
    for fig in ("fig1", "fig13", "fig3"):
        grid = block.get(fig)
        if not isinstance(grid, dict):
            continue
        for key in ("taus", "lrs"):
            if key in grid:
                grid[key] = _first(grid[key])
        if "seeds" in grid:
            grid["seeds"] = _first(grid["seeds"], 1)
        if "epochs" in grid:
            ref = (grid.get("train") or {}).get("epochs", reference) or max(grid["epochs"])
            grid["epochs"] = sorted({min(max(1, int(math.floor(e * epochs / ref + 0.5))), epochs) for e in grid["epochs"]})
        if isinstance(grid.get("train"), dict):
            grid["train"] = spec(grid["train"])
