"""Datasets, held on the device as tensors (or, for ImageNet, streamed from an ImageFolder tree).

``load_dataset(spec, device)`` reads the spec keys ``dataset``, ``dataset_args``, ``dtype`` and
``augment`` and returns an object with ``name``, ``num_classes``, ``num_train``, ``num_val``,
``input_shape``, ``train_batches(batch_size, shuffle, generator)`` and ``val_batches(batch_size)``.

    digits    scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download): pixels / 16,
              a fixed seeded split into train_size training and 1797 - train_size validation images
    mnist1d   MNIST-1D (Greydanus 2020), generated procedurally by the ``mnist1d`` package's
              ``make_dataset`` (no download): num_samples signals of length 40 from the ten digit
              templates (padded, shifted, scaled, sheared, correlated and white noise; seed), centred
              and scaled to unit variance over the whole set, the package's 80% / 20% split, held as
              (N, 1, 1, 40) images
    mnist     torchvision MNIST (IDX files under <root>/MNIST/raw), normalised with mean/std
    cifar10   torchvision CIFAR-10 (pickled batches under <root>/cifar-10-batches-py)
    cifar100  torchvision CIFAR-100 (<root>/cifar-100-python)
    imagenet  an ImageFolder tree <root>/train/<class>/*, <root>/val/<class>/*, read by a DataLoader

Augmentation (``augment: true``) runs on the device for the tensor datasets: random crop of the
image zero-padded by 4 pixels (black, before normalisation) and, for CIFAR, a horizontal flip
(MNIST digits are not flipped). Its randomness comes from the ``generator`` given to
``train_batches``, so a run is reproducible and resumable.
"""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass

import numpy as np
import torch

from .errors import UserError
from .spec import dataset_args_with_defaults

# Per-channel normalisation (mean, std) of the training images.
NORMALISATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
FLIP = {"cifar10": True, "cifar100": True, "mnist": False}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ---------------------------------------------------------------- device-resident tensors


@dataclass
class TensorDataset:
    """A dataset held on the device: ``train_x``, ``train_y``, ``val_x``, ``val_y``."""

    name: str
    num_classes: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    augment: bool = False
    flip: bool = False
    pad: int = 4
    pad_value: tuple = (0.0,)

    @property
    def num_train(self) -> int:
        return self.train_x.shape[0]

    @property
    def num_val(self) -> int:
        return self.val_x.shape[0]

    @property
    def input_shape(self) -> tuple:
        return tuple(self.train_x.shape[1:])

    def steps_per_epoch(self, batch_size: int) -> int:
        """Batches per epoch: 1 for full batch (batch_size 0 or >= N), else ceil(N / batch_size)."""
        if batch_size <= 0 or batch_size >= self.num_train:
            return 1
        return -(-self.num_train // batch_size)

    def train_batches(self, batch_size: int, shuffle: bool = True, generator=None, augment=None):
        """Yield (x, y) batches of the training set on its device; full batch is the stored tensor.

        Shuffling draws a permutation from ``generator`` (a CPU torch.Generator); the last
        batch may be smaller. A full batch is not permuted (the mean gradient does not depend on
        the order, and skipping the copy keeps full-batch training fast and bit-reproducible).
        """
        augment = self.augment if augment is None else augment
        n = self.num_train
        if self.steps_per_epoch(batch_size) == 1:
            yield (self._augment(self.train_x, generator) if augment else self.train_x), self.train_y
            return
        order = torch.randperm(n, generator=generator).to(self.train_x.device) if shuffle else None
        for start in range(0, n, batch_size):
            if order is None:
                x, y = self.train_x[start : start + batch_size], self.train_y[start : start + batch_size]
            else:
                idx = order[start : start + batch_size]
                x, y = self.train_x.index_select(0, idx), self.train_y.index_select(0, idx)
            yield (self._augment(x, generator) if augment else x), y

    def val_batches(self, batch_size: int = 0):
        """Yield (x, y) batches of the validation set (one batch when batch_size is 0)."""
        n = self.num_val
        step = n if batch_size <= 0 else batch_size
        for start in range(0, n, step):
            yield self.val_x[start : start + step], self.val_y[start : start + step]

    def _augment(self, x: torch.Tensor, generator) -> torch.Tensor:
        """Random crop of the image padded by `pad` pixels (black), then a random horizontal flip."""
        b, c, h, w = x.shape
        p = self.pad
        fill = torch.tensor(self.pad_value, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        padded = fill.expand(b, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p : p + h, p : p + w] = x
        dy = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (b,1,h,1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (b,1,1,w)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        out = padded[batch, chan, rows, cols]
        if self.flip:
            flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
            out = torch.where(flip[:, None, None, None], out.flip(3), out)
        return out


def _normalise(images: torch.Tensor, name: str, dtype) -> tuple[torch.Tensor, tuple]:
    """uint8 NCHW images -> (x / 255 - mean) / std in `dtype`; also the value of a black pixel."""
    mean, std = NORMALISATION[name]
    mean_t = torch.tensor(mean, dtype=dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=dtype).view(1, -1, 1, 1)
    x = (images.to(dtype) / 255.0 - mean_t) / std_t
    return x, tuple((-m / s) for m, s in zip(mean, std))


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (1797 x 64 pixels in 0..16, labels), read from the package's
    data file (the file ``sklearn.datasets.load_digits`` reads) without importing scikit-learn,
    which costs more than a short training run."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz") if spec else ""
    if not os.path.isfile(path):
        from sklearn.datasets import load_digits  # a layout we do not know: the public API

        digits = load_digits()
        return digits.data, digits.target
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


def _load_digits(args: dict, dtype, device) -> TensorDataset:
    pixels, labels = _digits_arrays()
    x = torch.tensor(pixels / 16.0, dtype=dtype).view(-1, 1, 8, 8)
    y = torch.tensor(labels, dtype=torch.int64)
    perm = torch.as_tensor(np.random.default_rng(args["split_seed"]).permutation(len(y)))
    tr, va = perm[: args["train_size"]], perm[args["train_size"] :]
    return TensorDataset("digits", 10, x[tr].to(device), y[tr].to(device), x[va].to(device), y[va].to(device))


def _mnist1d_arrays(num_samples: int, seed: int) -> dict:
    """The package's ``make_dataset`` with its default arguments but ``num_samples`` and ``seed``
    (x, y: the first 80%; x_test, y_test: the rest). It seeds Python's and NumPy's global generators:
    their states are put back, so that loading the data changes no other randomness."""
    import random

    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = int(num_samples), int(seed)
    states = random.getstate(), np.random.get_state()
    try:
        return make_dataset(args)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])


def _load_mnist1d(args: dict, dtype, device) -> TensorDataset:
    d = _mnist1d_arrays(args["num_samples"], args["seed"])

    def signals(a):
        return torch.tensor(np.asarray(a), dtype=dtype).view(len(a), 1, 1, -1).to(device)

    def labels(a):
        return torch.tensor(np.asarray(a), dtype=torch.int64).to(device)

    return TensorDataset("mnist1d", 10, signals(d["x"]), labels(d["y"]), signals(d["x_test"]), labels(d["y_test"]))


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _unpack_mnist_gz(raw: str) -> None:
    """torchvision reads the raw IDX files; unpack any that exist only gzipped (as downloaded)."""
    for name in MNIST_FILES:
        path = os.path.join(raw, name)
        if not os.path.exists(path) and os.path.exists(path + ".gz"):
            tmp = path + ".tmp"
            with gzip.open(path + ".gz", "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, path)


def _torchvision_set(name: str, args: dict, train: bool):
    from torchvision import datasets as tv

    root = os.path.expanduser(str(args["root"]))
    cls = {"mnist": tv.MNIST, "cifar10": tv.CIFAR10, "cifar100": tv.CIFAR100}[name]
    where = {
        "mnist": os.path.join(root, "MNIST", "raw"),
        "cifar10": os.path.join(root, "cifar-10-batches-py"),
        "cifar100": os.path.join(root, "cifar-100-python"),
    }[name]
    if name == "mnist" and os.path.isdir(where):
        _unpack_mnist_gz(where)
    if name != "mnist" and not args["verify"]:
        # dataset_args.verify: false (tiny test sets in the real format): torchvision then checks
        # that each file exists, not that its md5 is the real dataset's
        cls = type(cls.__name__, (cls,), {"train_list": [[f, None] for f, _ in cls.train_list],
                                          "test_list": [[f, None] for f, _ in cls.test_list],
                                          "meta": dict(cls.meta, md5=None)})
    try:
        return cls(root, train=train, download=args["download"])
    except (RuntimeError, OSError, EOFError, ValueError, AssertionError, KeyError) as exc:
        hint = (
            f"set dataset_args.download: true to let torchvision download it into {root!r}, "
            f"or put the files there (dataset_args.root / data_dir)"
        )
        raise UserError(f"dataset {name!r} not found or unreadable in {where!r} ({exc}); {hint}") from None


def _subset(x, y, n, key):
    if n is None:
        return x, y
    if not 1 <= n <= len(y):
        raise UserError(f"spec key 'dataset_args.{key}': must be in 1..{len(y)}, got {n}")
    return x[:n], y[:n]


def _load_torchvision(name: str, args: dict, dtype, device, augment: bool) -> TensorDataset:
    parts = []
    for train, key in ((True, "train_subset"), (False, "val_subset")):
        ds = _torchvision_set(name, args, train)
        images = torch.as_tensor(np.asarray(ds.data))
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)  # -> NCHW
        labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
        images, labels = _subset(images, labels, args[key], key)
        x, black = _normalise(images, name, dtype)
        parts += [x.to(device), labels.to(device)]
    num_classes = 100 if name == "cifar100" else 10
    return TensorDataset(name, num_classes, *parts, augment=augment, flip=FLIP[name], pad_value=black)


# ---------------------------------------------------------------- ImageNet (streamed)


class SeededSampler(torch.utils.data.Sampler):
    """Indices of one epoch, each paired with the seed of its sample's augmentation.

    ``new_epoch(generator)`` draws the epoch's order (a permutation, or 0..N-1 without shuffle)
    and one 63-bit seed from ``generator``; sample i of the epoch then gets seed + index. The
    augmentation of every image is thus a function of the run's seed, its epoch and its index
    only: the same with any number of DataLoader workers, persistent or not, and on resume."""

    def __init__(self, n: int):
        self.n = n
        self.order = list(range(n))
        self.seed = 0

    def new_epoch(self, shuffle: bool, generator=None) -> None:
        if shuffle:
            self.order = torch.randperm(self.n, generator=generator).tolist()
            self.seed = int(torch.randint(0, 2**62, (), generator=generator))
        else:
            self.order, self.seed = list(range(self.n)), 0

    def __iter__(self):
        return iter([(i, self.seed + i) for i in self.order])

    def __len__(self) -> int:
        return self.n


class SeededFolder(torch.utils.data.Dataset):
    """An ImageFolder whose item ``(index, seed)`` is image ``index`` transformed with torch's CPU
    random generator seeded by ``seed`` (forked: the caller's generator state is left alone)."""

    def __init__(self, folder):
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, item):
        index, seed = item
        path, label = self.folder.samples[index]
        image = self.folder.loader(path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x = self.folder.transform(image)
        return x, label


class FolderDataset:
    """An ImageFolder tree read by DataLoader workers; never held in memory.

    Reading keeps an accelerator busy: ``dataset_args.workers`` decoding processes that stay alive
    across epochs (persistent workers, one DataLoader per split and batch size), pinned host memory
    and non-blocking copies on CUDA, and ``prefetch`` batches queued per worker. Augmentation
    (RandomResizedCrop + horizontal flip) is seeded per image (``SeededSampler``), so a run is
    reproducible and resumes bit for bit whatever the number of workers."""

    def __init__(self, args: dict, dtype, device, augment: bool):
        from torchvision import datasets as tv
        from torchvision import transforms as T

        root = os.path.expanduser(str(args["root"]))
        for split in ("train", "val"):
            if not os.path.isdir(os.path.join(root, split)):
                raise UserError(
                    f"dataset 'imagenet' not found: no folder {os.path.join(root, split)!r}; "
                    "dataset_args.root must hold train/<class>/*.JPEG and val/<class>/*.JPEG "
                    "(ImageNet from image-net.org, val images sorted into class folders)"
                )
        size = args["image_size"]
        mean, std = NORMALISATION["imagenet"]
        norm = [T.ToTensor(), T.Normalize(mean, std)]
        train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *norm])
        eval_tf = T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), *norm])
        self.name = "imagenet"
        try:
            self._train = tv.ImageFolder(os.path.join(root, "train"), train_tf if augment else eval_tf)
            self._train_plain = tv.ImageFolder(os.path.join(root, "train"), eval_tf)
            self._val = tv.ImageFolder(os.path.join(root, "val"), eval_tf)
        except (FileNotFoundError, OSError) as exc:
            raise UserError(f"dataset 'imagenet' in {root!r}: {exc}") from None
        if self._val.classes != self._train.classes:
            raise UserError(f"dataset 'imagenet' in {root!r}: val/ and train/ have different class folders")
        self.num_classes = len(self._train.classes)
        self.augment = augment
        self.dtype, self.device, self.workers = dtype, torch.device(device), args["workers"]
        self.prefetch = args["prefetch"]
        self.channels_last = False  # set by the training engine (spec performance.channels_last on CUDA)
        self.input_shape = (3, size, size)
        self.train_x = self.train_y = self.val_x = self.val_y = None  # streamed, not resident
        self._loaders = {}

    @property
    def num_train(self) -> int:
        return len(self._train)

    @property
    def num_val(self) -> int:
        return len(self._val)

    def steps_per_epoch(self, batch_size: int) -> int:
        if batch_size <= 0:
            raise UserError("spec key 'batch_size': imagenet cannot be trained full batch (batch_size 0)")
        return -(-self.num_train // batch_size)

    def loader(self, folder, batch_size: int):
        """The (cached) DataLoader of ``folder`` in batches of ``batch_size``, and its sampler."""
        key = (id(folder), batch_size)
        if key not in self._loaders:
            sampler = SeededSampler(len(folder))
            workers = self.workers
            loader = torch.utils.data.DataLoader(
                SeededFolder(folder), batch_size=batch_size, sampler=sampler, num_workers=workers,
                pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                prefetch_factor=self.prefetch if workers > 0 else None,
                generator=torch.Generator().manual_seed(0),  # the workers' base seed (unused: items are seeded)
            )
            self._loaders[key] = (loader, sampler)
        return self._loaders[key]

    def _batches(self, folder, batch_size, shuffle, generator):
        loader, sampler = self.loader(folder, batch_size)
        sampler.new_epoch(shuffle, generator)
        memory = torch.channels_last if self.channels_last else torch.contiguous_format
        for x, y in loader:
            x = x.to(self.device, self.dtype, non_blocking=True, memory_format=memory)
            yield x, y.to(self.device, non_blocking=True)

    def train_batches(self, batch_size: int, shuffle: bool = True, generator=None, augment=None):
        augment = self.augment if augment is None else augment
        yield from self._batches(self._train if augment else self._train_plain, batch_size, shuffle, generator)

    def val_batches(self, batch_size: int = 256):
        yield from self._batches(self._val, batch_size if batch_size > 0 else 256, False, None)


# ---------------------------------------------------------------- entry point


def load_dataset(spec: dict, device="cpu"):
    """The dataset named by ``spec['dataset']`` with ``spec['dataset_args']``, on ``device``."""
    name = spec.get("dataset", "digits")
    args = dataset_args_with_defaults(name, spec.get("dataset_args"))
    dtype = DTYPES[spec.get("dtype", "float32")]
    augment = bool(spec.get("augment", False))
    if augment and name in ("digits", "mnist1d"):
        raise UserError(f"spec key 'augment': augmentation is for mnist, cifar10, cifar100 and imagenet, not {name}")
    if name == "digits":
        return _load_digits(args, dtype, device)
    if name == "mnist1d":
        return _load_mnist1d(args, dtype, device)
    if name == "imagenet":
        return FolderDataset(args, dtype, device, augment)
    return _load_torchvision(name, args, dtype, device, augment)
