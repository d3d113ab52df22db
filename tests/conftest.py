"""Shared tiny models with odd sizes, and the real Fashion-MNIST location."""

from pathlib import Path

import pytest
import torch
from torch import nn

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


class TinyNet(nn.Module):
    """A small conv + linear net with odd sizes (3 channels in, 5x5 images, 7 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, kernel_size=3, padding=1)
        self.fc = nn.Linear(5 * 5 * 5, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Prepared data sets go to a temporary cache, never the user's."""
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
