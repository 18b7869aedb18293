"""Image classifiers, registered by name: ``cnn`` (default), ``mlp``, ``resnet18``.

Every builder takes ``(image_shape, num_classes)``.
"""

from __future__ import annotations

from torch import nn

from flowerbed.platform.registry import MODELS


class Standardize(nn.Module):
    """Map pixels from [0, 1] to roughly zero mean, unit scale inside the model, so that
    triggers and defences work in plain pixel space while training stays well conditioned."""

    def forward(self, images):
        return (images - 0.5) / 0.25


@MODELS.register("cnn")
def small_cnn(image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A small VGG-style CNN with BatchNorm (~70k parameters).

    Two full-resolution convolutions come before the first pooling, so the first
    layers see the high frequencies that frequency-domain triggers live in.
    BatchNorm (running statistics averaged by FedAvg like any other weight) was
    chosen over GroupNorm and no normalisation after a measurement on
    digits-rgb32 (3,000 images, SGD lr 0.03, 4 epochs; test accuracy
    BatchNorm 0.94, GroupNorm 0.74, none 0.81; GroupNorm and none sit on a
    loss plateau for the first epoch)."""

    def block(inputs: int, outputs: int) -> list[nn.Module]:
        return [nn.Conv2d(inputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.ReLU()]

    return nn.Sequential(
        Standardize(),
        *block(image_shape[0], 32),
        *block(32, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        nn.MaxPool2d(2),
        *block(64, 64),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


@MODELS.register("mlp")
def mlp(image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A two-hidden-layer perceptron on the flattened image."""
    inputs = image_shape[0] * image_shape[1] * image_shape[2]
    return nn.Sequential(
        Standardize(),
        nn.Flatten(),
        nn.Linear(inputs, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


@MODELS.register("resnet18")
def cifar_resnet18(image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 in the CIFAR layout (3x3 stem, stride 1, no max-pool)
    (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016)."""
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(image_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return nn.Sequential(Standardize(), model)
