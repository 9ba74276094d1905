"""The papers' networks and small stand-ins, built by name: ``build_model(name, **model_args)``.

Paper scale (Giladi et al. 2020, section 3 and appendix E):
    mnist_cnn   MNIST CNN: conv 20-5, conv 50-5, fc 500, fc 10 (LeNet, as in Caffe), fig1/fig13
    fc3x1024    MNIST, three hidden layers of 1024 ReLU units, fig4 (right)
    vgg11       VGG-11 with BatchNorm for 32x32 CIFAR images, fig2/fig3/fig12, table 1
    resnet44    ResNet-44 for CIFAR (He et al. 2016, 3x7 basic blocks, identity shortcuts), table 1, fig11
    wrn16_4     Wide ResNet 16-4 (Zagoruyko & Komodakis 2016), CIFAR-100, table 1
    c3          Keskar et al.'s shallow convolutional network C3 (CIFAR-100), table 1
    resnet50    torchvision's ResNet-50 (ImageNet), fig5/fig9
Quick scale (8x8 scikit-learn digits):
    mlp         flatten -> [Linear -> activation] x len(hidden) -> Linear
    cnn_digits  two 3x3 convolutions (optional BatchNorm), 2x2 max-pool, two linear layers
    resnet_digits  a small BatchNorm ResNet (CIFAR-style basic blocks, two stages), fig5/fig9 stand-in

Every model takes images (N, C, H, W) and returns logits (N, num_classes).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UserError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise UserError(f"model_args.activation: unknown value {name!r} (choose {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


# ---------------------------------------------------------------- quick-scale stand-ins


def mlp(hidden=(64,), activation="relu", in_features=64, num_classes=10) -> nn.Module:
    """Fully connected network on flattened inputs: in_features -> hidden... -> num_classes."""
    act = _activation(activation)
    layers, width = [nn.Flatten()], in_features
    for h in hidden:
        layers += [nn.Linear(width, int(h)), act()]
        width = int(h)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn_digits(batchnorm=False, channels=(16, 32), hidden=64, in_channels=1, num_classes=10) -> nn.Module:
    """Small CNN for 1x8x8 digits: conv3-c1, conv3-c2, max-pool 2 (-> 4x4), fc hidden, fc classes."""
    c1, c2 = channels

    def conv(cin, cout):
        block = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm)]
        if batchnorm:
            block.append(nn.BatchNorm2d(cout))
        return block + [nn.ReLU()]

    return nn.Sequential(
        *conv(in_channels, c1),
        *conv(c1, c2),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * 4 * 4, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


# ---------------------------------------------------------------- MNIST


def mnist_cnn(num_classes=10) -> nn.Module:
    """conv 20-5, max-pool 2, conv 50-5, max-pool 2, fc 500, fc 10 (ReLU), on 1x28x28 inputs."""
    return nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(50 * 4 * 4, 500),
        nn.ReLU(),
        nn.Linear(500, num_classes),
    )


def cifar10_quick(num_classes=10) -> nn.Module:
    """Caffe's cifar10_quick (the CIFAR network of *Asynchrony begets Momentum*, sec. IV), for
    3x32x32 inputs: conv 32@5x5 (pad 2) -> max-pool 3/2 -> ReLU -> conv 32@5x5 -> ReLU -> avg-pool 3/2
    -> conv 64@5x5 -> ReLU -> avg-pool 3/2 -> fc 64 -> fc 10 (no ReLU between the two fc layers, as
    in Caffe's prototxt). Caffe rounds pooled sizes up (ceil mode): 32 -> 16 -> 8 -> 4."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 5, padding=2),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.ReLU(),
        nn.Conv2d(32, 32, 5, padding=2),
        nn.ReLU(),
        nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 64),
        nn.Linear(64, num_classes),
    )


def fc3x1024(in_features=784, width=1024, num_classes=10) -> nn.Module:
    """Three hidden layers of 1024 ReLU units (section 3.1, shifted-momentum stability)."""
    return mlp(hidden=(width,) * 3, activation="relu", in_features=in_features, num_classes=num_classes)


# ---------------------------------------------------------------- CIFAR

VGG11_CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def vgg11(num_classes=10, batchnorm=True) -> nn.Module:
    """VGG-11 (configuration A) for 32x32 inputs: 8 conv3 layers (+BN, ReLU), 5 max-pools, fc."""
    layers, cin = [], 3
    for v in VGG11_CONFIG:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        layers.append(nn.Conv2d(cin, v, 3, padding=1, bias=not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        cin = v
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, num_classes))


class CifarBasicBlock(nn.Module):
    """conv3-BN-ReLU-conv3-BN + shortcut, ReLU; shortcut 'A': stride-2 subsample, zero-padded channels."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin
        self.stride = stride

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.stride != 1 or self.pad:
            shortcut = x[:, :, :: self.stride, :: self.stride]
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet for CIFAR (He et al. 2016, section 4.2): depth 6n+2, widths 16/32/64, identity shortcuts."""

    def __init__(self, depth=44, num_classes=10):
        super().__init__()
        if (depth - 2) % 6:
            raise UserError(f"model_args.depth: a CIFAR ResNet has depth 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(CifarBasicBlock(cin, width, stride if i == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DigitsResNet(nn.Module):
    """A small ResNet for 1x8x8 digits: conv3-BN-ReLU (width), ``blocks`` basic blocks at 8x8,
    ``blocks`` at 4x4 (2·width, stride 2, shortcut 'A'), global average pool, fc."""

    def __init__(self, width=8, blocks=1, in_channels=1, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        layers, cin = [], width
        for w, stride in ((width, 1), (2 * width, 2)):
            for i in range(blocks):
                layers.append(CifarBasicBlock(cin, w, stride if i == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet_digits(width=8, blocks=1, in_channels=1, num_classes=10) -> nn.Module:
    """The quick stand-in of ResNet-50 (figs. 5, 9): DigitsResNet (BatchNorm, residual blocks)."""
    return DigitsResNet(width, blocks, in_channels, num_classes)


def resnet44(num_classes=10) -> nn.Module:
    """ResNet-44 for CIFAR-10 (7 basic blocks per stage, 0.66M parameters)."""
    return CifarResNet(44, num_classes)


class _WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3-BN-ReLU-conv3, 1x1 conv shortcut when the shape changes."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """WRN-d-k (Zagoruyko & Komodakis 2016): (d-4)/6 pre-activation blocks per stage, widths 16k/32k/64k."""

    def __init__(self, depth=16, widen=4, num_classes=100):
        super().__init__()
        if (depth - 4) % 6:
            raise UserError(f"model_args.depth: a wide ResNet has depth 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        blocks, cin = [], 16
        for width, stride in zip(widths, (1, 2, 2)):
            for i in range(n):
                blocks.append(_WideBlock(cin, width, stride if i == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn(self.blocks(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def wrn16_4(num_classes=100) -> nn.Module:
    """WRN-16-4 for CIFAR-100 (2 blocks per stage, widths 64/128/256)."""
    return WideResNet(16, 4, num_classes)


def c3(num_classes=100) -> nn.Module:
    """Keskar et al. (2017) C3: the shallow 'AlexNet-like' CIFAR network on CIFAR-100.

    2 x [conv5-64, ReLU, max-pool 3/2, BatchNorm], then fc 384, fc 192 (ReLU), fc classes.
    """
    return nn.Sequential(
        nn.Conv2d(3, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.BatchNorm2d(64),
        nn.Conv2d(64, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.BatchNorm2d(64),
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, 384),
        nn.ReLU(),
        nn.Linear(384, 192),
        nn.ReLU(),
        nn.Linear(192, num_classes),
    )


# ---------------------------------------------------------------- ImageNet


def resnet50(num_classes=1000) -> nn.Module:
    """torchvision's ResNet-50 (random initialisation)."""
    from torchvision.models import resnet50 as tv_resnet50

    return tv_resnet50(weights=None, num_classes=num_classes)


MODELS = {
    "mlp": mlp,
    "cnn_digits": cnn_digits,
    "mnist_cnn": mnist_cnn,
    "fc3x1024": fc3x1024,
    "vgg11": vgg11,
    "resnet44": resnet44,
    "wrn16_4": wrn16_4,
    "c3": c3,
    "cifar10_quick": cifar10_quick,
    "resnet50": resnet50,
    "resnet_digits": resnet_digits,
}


def build_model(name: str, **model_args) -> nn.Module:
    """Build the network registered as ``name`` with ``model_args`` (see MODELS)."""
    if name not in MODELS:
        raise UserError(f"spec key 'model': unknown model {name!r} (choose {', '.join(MODELS)})")
    builder = MODELS[name]
    allowed = inspect.signature(builder).parameters
    for key in model_args:
        if key not in allowed:
            raise UserError(
                f"spec key 'model_args.{key}': not an argument of model {name!r} (choose {', '.join(allowed)})"
            )
    return builder(**model_args)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
