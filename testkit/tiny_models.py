"""A tiny model for tests that train from scratch on real digits in seconds."""

from __future__ import annotations

from torch import nn


def small_cnn(c: int) -> nn.Module:
    """Three conv blocks and a global max pool: a digit is found wherever it sits, so two side by side
    give two high outputs. Learns from scratch in a few seconds on a CPU."""

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    return nn.Sequential(
        block(3, 16),
        nn.MaxPool2d(2),
        block(16, 32),
        nn.MaxPool2d(2),
        block(32, 64),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(64, c),
    )
