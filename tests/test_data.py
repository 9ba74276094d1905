"""Datasets: digits split, tiny files in the real MNIST (IDX) and CIFAR (pickle) formats read through
torchvision's own classes, ImageFolder streaming, batching and device-side augmentation."""

import gzip
import hashlib
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets as tv

from delay_stability.data import NORMALISATION, dataset_args_with_defaults, load_dataset
from delay_stability.errors import UserError
from delay_stability.spec import validate_spec



# ------------------------------------------------------------------ writers for the real formats


def write_idx(path, array, compress=False):
    """IDX: magic (0, 0, type 0x08 = uint8, ndim), big-endian int32 sizes, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    opener = gzip.open if compress else open
    with opener(path + (".gz" if compress else ""), "wb") as f:
        f.write(payload)


def make_mnist(root, n_train=12, n_test=7, compress=False, seed=0):
    rng = np.random.default_rng(seed)
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, array in arrays.items():
        write_idx(os.path.join(raw, name), array, compress)
    return arrays


def md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def make_cifar(root, monkeypatch, cls, seed=0):
    """Tiny pickled batches in CIFAR's layout; the class's md5 table pointed at them."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, cls.base_folder)
    os.makedirs(folder)
    label_key = "labels" if cls is tv.CIFAR10 else "fine_labels"
    classes = 10 if cls is tv.CIFAR10 else 100
    batches = {}
    for name, _ in cls.train_list + cls.test_list:
        n = int(rng.integers(3, 6))
        batches[name] = {"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), label_key: rng.integers(0, classes, n).tolist()}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batches[name], f)
    with open(os.path.join(folder, cls.meta["filename"]), "wb") as f:
        pickle.dump({cls.meta["key"]: [f"class{i}" for i in range(classes)]}, f)
    monkeypatch.setattr(cls, "train_list", [[n, md5(os.path.join(folder, n))] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5(os.path.join(folder, n))] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", dict(cls.meta, md5=md5(os.path.join(folder, cls.meta["filename"]))))
    train = [batches[n] for n, _ in cls.train_list]
    test = [batches[n] for n, _ in cls.test_list]
    join = lambda bs: (np.concatenate([b["data"] for b in bs]), sum((b[label_key] for b in bs), []))  # noqa: E731
    return join(train), join(test)


def normalised(images_nchw, name, dtype=torch.float64):
    mean, std = NORMALISATION[name]
    x = torch.as_tensor(images_nchw).to(dtype) / 255.0
    return (x - torch.tensor(mean, dtype=dtype).view(1, -1, 1, 1)) / torch.tensor(std, dtype=dtype).view(1, -1, 1, 1)


# ------------------------------------------------------------------ digits


def test_digits_fixed_seeded_split():
    from sklearn.datasets import load_digits

    ds = load_dataset({"dataset": "digits", "dtype": "float64"})
    assert (ds.num_train, ds.num_val, ds.num_classes, ds.input_shape) == (1297, 500, 10, (1, 8, 8))
    assert ds.train_x.dtype == torch.float64 and 0 <= ds.train_x.min() and ds.train_x.max() <= 1
    digits = load_digits()
    perm = np.random.default_rng(0).permutation(1797)
    assert torch.equal(ds.train_x.view(1297, 64), torch.tensor(digits.data[perm[:1297]] / 16.0))
    assert torch.equal(ds.val_y, torch.tensor(digits.target[perm[1297:]]))
    again = load_dataset({"dataset": "digits", "dtype": "float64"})
    other = load_dataset({"dataset": "digits", "dataset_args": {"split_seed": 1, "train_size": 1000}})
    assert torch.equal(again.train_x, ds.train_x)
    assert other.num_train == 1000 and other.train_x.dtype == torch.float32
    assert not torch.equal(other.train_y[:100], ds.train_y[:100])


# ------------------------------------------------------------------ MNIST-1D
def test_mnist1d_is_the_packages_make_dataset_as_one_row_images_and_leaves_global_rngs_alone():
    """The fig5/fig9 quick stand-in: exactly mnist1d's make_dataset (default arguments, seed 42, no
    download), its 80/20 split, each signal a 1x1x40 image; generating it neither moves nor
    depends on Python's or NumPy's global generators."""
    import random

    import numpy as np
    from mnist1d.data import get_dataset_args, make_dataset

    random.seed(7)
    np.random.seed(7)
    expected_next = (random.random(), np.random.rand())
    random.seed(7)
    np.random.seed(7)
    ds = load_dataset({"dataset": "mnist1d", "dtype": "float64"})
    assert (random.random(), np.random.rand()) == expected_next
    reference = make_dataset(get_dataset_args())
    assert (ds.num_train, ds.num_val, ds.input_shape, ds.num_classes) == (4000, 1000, (1, 1, 40), 10)
    assert torch.equal(ds.train_x.view(4000, 40), torch.tensor(reference["x"]))
    assert torch.equal(ds.val_y, torch.tensor(reference["y_test"]))
    assert abs(float(torch.cat([ds.train_x, ds.val_x]).mean())) < 1e-9  # centred over the whole set
    assert torch.bincount(ds.train_y).min() > 300  # ten balanced classes
    small = load_dataset({"dataset": "mnist1d", "dataset_args": {"num_samples": 500, "seed": 1}})
    assert (small.num_train, small.num_val) == (400, 100) and small.train_x.dtype == torch.float32
    with pytest.raises(UserError, match="dataset_args.num_samples"):
        dataset_args_with_defaults("mnist1d", {"num_samples": 10})
    with pytest.raises(UserError, match="augment"):
        validate_spec({"model": "resnet_digits", "dataset": "mnist1d", "augment": True, "epochs": 1, "lr": 0.1})


# ------------------------------------------------------------------ MNIST / CIFAR through torchvision



@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_files_through_torchvision(tmp_path, compress):
    arrays = make_mnist(str(tmp_path), compress=compress)
    ds = load_dataset({"dataset": "mnist", "dataset_args": {"root": str(tmp_path)}, "dtype": "float64"})
    assert (ds.num_train, ds.num_val, ds.input_shape) == (12, 7, (1, 28, 28))
    expected = normalised(arrays["train-images-idx3-ubyte"][:, None], "mnist")
    torch.testing.assert_close(ds.train_x, expected, rtol=0, atol=1e-12)
    assert ds.val_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_mnist_subsets_and_data_dir_alias(tmp_path):
    make_mnist(str(tmp_path))
    ds = load_dataset({"dataset": "mnist", "dataset_args": {"data_dir": str(tmp_path), "train_subset": 5, "val_subset": 3}})
    assert (ds.num_train, ds.num_val) == (5, 3)
    with pytest.raises(UserError, match="train_subset"):
        load_dataset({"dataset": "mnist", "dataset_args": {"root": str(tmp_path), "train_subset": 50}})


@pytest.mark.parametrize("name, cls", [("cifar10", tv.CIFAR10), ("cifar100", tv.CIFAR100)])
def test_cifar_pickled_batches_through_torchvision(tmp_path, monkeypatch, name, cls):
    (train_data, train_labels), (test_data, test_labels) = make_cifar(str(tmp_path), monkeypatch, cls)
    ds = load_dataset({"dataset": name, "dataset_args": {"root": str(tmp_path)}, "dtype": "float64"})
    assert ds.num_classes == (10 if name == "cifar10" else 100)
    assert ds.input_shape == (3, 32, 32) and ds.num_train == len(train_labels)
    expected = normalised(train_data.reshape(-1, 3, 32, 32), name)
    torch.testing.assert_close(ds.train_x, expected, rtol=0, atol=1e-12)
    assert ds.train_y.tolist() == train_labels and ds.val_y.tolist() == test_labels


@pytest.mark.parametrize("name, where", [("mnist", "MNIST"), ("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_missing_dataset_says_where_and_how(tmp_path, name, where):
    with pytest.raises(UserError) as err:
        load_dataset({"dataset": name, "dataset_args": {"root": str(tmp_path)}})
    message = str(err.value)
    assert str(tmp_path) in message and where in message and "download: true" in message


def test_corrupted_cifar_file_is_a_user_error(tmp_path, monkeypatch):
    make_cifar(str(tmp_path), monkeypatch, tv.CIFAR10)
    with open(os.path.join(tmp_path, "cifar-10-batches-py", "data_batch_2"), "ab") as f:
        f.write(b"junk")  # md5 no longer matches
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        load_dataset({"dataset": "cifar10", "dataset_args": {"root": str(tmp_path)}})


# ------------------------------------------------------------------ ImageNet-style folders


def test_image_folder_is_streamed(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("a", "b"):
            os.makedirs(tmp_path / split / cls)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    spec = {"dataset": "imagenet", "dataset_args": {"root": str(tmp_path), "workers": 0, "image_size": 8}, "augment": True}
    ds = load_dataset(spec)
    assert ds.train_x is None and (ds.num_train, ds.num_val, ds.num_classes) == (6, 4, 2)
    batches = list(ds.train_batches(4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 8, 8), (2, 3, 8, 8)]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == [0, 0, 0, 1, 1, 1]
    assert sum(len(y) for _, y in ds.val_batches(3)) == 4
    with pytest.raises(UserError, match="train"):
        load_dataset({"dataset": "imagenet", "dataset_args": {"root": str(tmp_path / "nowhere")}})


# ------------------------------------------------------------------ batching and augmentation


def test_minibatches_cover_the_training_set_once_and_reproducibly():
    ds = load_dataset({"dataset": "digits", "dataset_args": {"train_size": 100}})
    batches = list(ds.train_batches(32, shuffle=True, generator=torch.Generator().manual_seed(1)))
    assert [len(y) for _, y in batches] == [32, 32, 32, 4]
    rows = torch.cat([x.view(len(x), -1) for x, _ in batches])
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(rows) == key(ds.train_x.view(100, -1))
    again = list(ds.train_batches(32, shuffle=True, generator=torch.Generator().manual_seed(1)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    (full_x, full_y), = ds.train_batches(0)
    assert full_x is ds.train_x and full_y is ds.train_y and ds.steps_per_epoch(0) == 1 == ds.steps_per_epoch(500)


@pytest.mark.parametrize("flip", [True, False])
def test_augmentation_is_a_padded_crop_and_flip(flip):
    """Every augmented image equals one of the 81 windows (x 2 flips) of the black-padded image."""
    from delay_stability.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 2, 5, 6, generator=g, dtype=torch.float64)
    ds = TensorDataset("t", 2, x, torch.zeros(64, dtype=torch.int64), x, x, augment=True, flip=flip, pad=4, pad_value=(-1.0, -2.0))
    out = ds._augment(x, g)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    padded[:, 0][padded[:, 0] == 0] = -1.0
    padded[:, 1][padded[:, 1] == 0] = -2.0
    seen_offsets, flips = set(), 0
    for i in range(64):
        matches = [
            (dy, dx, f)
            for dy in range(9)
            for dx in range(9)
            for f in ((False, True) if flip else (False,))
            if torch.equal(out[i], (lambda w: w.flip(2) if f else w)(padded[i, :, dy : dy + 5, dx : dx + 6]))
        ]
        assert matches, f"image {i} is not a padded crop"
        seen_offsets.add(matches[0][:2])
        flips += matches[0][2]
    assert len(seen_offsets) > 20
    assert (0 < flips < 64) if flip else flips == 0


def test_dataset_args_are_checked():
    with pytest.raises(UserError, match="dataset_args.colour"):
        dataset_args_with_defaults("cifar10", {"colour": True})
    with pytest.raises(UserError, match="'dataset'.*svhn"):
        dataset_args_with_defaults("svhn", {})
    with pytest.raises(UserError, match="train_size"):
        dataset_args_with_defaults("digits", {"train_size": 1797})
    with pytest.raises(UserError, match="augment"):
        load_dataset({"dataset": "digits", "augment": True})
