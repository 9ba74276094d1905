"""Model registry: output shapes, and parameter counts against closed-form layer sums."""

import pytest
import torch

from delay_stability.errors import UserError
from delay_stability.models import MODELS, build_model, count_parameters



def linear(i, o):
    return i * o + o


def conv(cin, cout, k, bias=True):
    return cin * cout * k * k + (cout if bias else 0)


def bn(c):
    return 2 * c


def vgg11_count(nc):
    widths = [64, 128, 256, 256, 512, 512, 512, 512]
    total, cin = 0, 3
    for w in widths:
        total += conv(cin, w, 3, bias=False) + bn(w)
        cin = w
    return total + linear(512, nc)


def resnet_cifar_count(n, nc):
    total, cin = conv(3, 16, 3, False) + bn(16), 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += conv(cin, width, 3, False) + bn(width) + conv(width, width, 3, False) + bn(width)
            cin = width
    return total + linear(64, nc)


def resnet_digits_count(w, n, nc):
    total, cin = conv(1, w, 3, False) + bn(w), w
    for width in (w, 2 * w):
        for _ in range(n):
            total += conv(cin, width, 3, False) + bn(width) + conv(width, width, 3, False) + bn(width)
            cin = width
    return total + linear(2 * w, nc)


def wrn_count(n, k, nc):
    total, cin = conv(3, 16, 3, False), 16
    for width in (16 * k, 32 * k, 64 * k):
        for _ in range(n):
            total += bn(cin) + conv(cin, width, 3, False) + bn(width) + conv(width, width, 3, False)
            total += conv(cin, width, 1, False) if cin != width else 0
            cin = width
    return total + bn(cin) + linear(cin, nc)


EXPECTED = {
    # name: (model_args, input shape, parameter count)
    "mlp": (dict(hidden=[32, 16], activation="tanh"), (3, 1, 8, 8), linear(64, 32) + linear(32, 16) + linear(16, 10)),
    "cnn_digits": (
        dict(batchnorm=True),
        (3, 1, 8, 8),
        conv(1, 16, 3, False) + bn(16) + conv(16, 32, 3, False) + bn(32) + linear(512, 64) + linear(64, 10),
    ),
    "mnist_cnn": ({}, (2, 1, 28, 28), 431_080),
    "fc3x1024": ({}, (2, 1, 28, 28), 2_913_290),
    "vgg11": ({}, (2, 3, 32, 32), vgg11_count(10)),
    "resnet44": ({}, (2, 3, 32, 32), 658_586),
    "wrn16_4": ({}, (2, 3, 32, 32), wrn_count(2, 4, 100)),
    "c3": (
        {},
        (2, 3, 32, 32),
        conv(3, 64, 5) + bn(64) + conv(64, 64, 5) + bn(64) + linear(4096, 384) + linear(384, 192) + linear(192, 100),
    ),
    "resnet50": ({}, (1, 3, 64, 64), 25_557_032),
    "resnet_digits": (dict(width=8, blocks=2), (3, 1, 8, 8), resnet_digits_count(8, 2, 10)),
    # Caffe's cifar10_quick: 145,578 weights (conv 32/32/64 @ 5x5, fc 1024-64, fc 64-10)
    "cifar10_quick": ({}, (2, 3, 32, 32), conv(3, 32, 5) + conv(32, 32, 5) + conv(32, 64, 5) + linear(1024, 64) + linear(64, 10)),
}


def test_every_registered_model_is_covered():
    assert set(EXPECTED) == set(MODELS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_output_shape_and_parameter_count(name):
    args, shape, count = EXPECTED[name]
    torch.manual_seed(0)
    model = build_model(name, **args)
    assert count_parameters(model) == count
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(*shape))
    num_classes = {"wrn16_4": 100, "c3": 100, "resnet50": 1000}.get(name, 10)
    assert out.shape == (shape[0], num_classes)
    assert torch.isfinite(out).all()


def test_closed_form_counts_agree_with_published_sizes():
    assert resnet_cifar_count(7, 10) == 658_586  # ResNet-44, "0.66M" in He et al. (2016)
    assert 2.7e6 < wrn_count(2, 4, 100) < 2.8e6  # WRN-16-4, "2.7M" in Zagoruyko & Komodakis (2016)


def test_num_classes_and_width_arguments():
    assert build_model("vgg11", num_classes=100)(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    model = build_model("mlp", hidden=[7], in_features=784, num_classes=3)
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 3)


def test_unknown_model_or_argument_is_a_user_error():
    with pytest.raises(UserError, match="'model'.*'vgg12'"):
        build_model("vgg12")
    with pytest.raises(UserError, match="model_args.depth"):
        build_model("vgg11", depth=13)
    with pytest.raises(UserError, match="activation"):
        build_model("mlp", activation="gelu")
