"""Image classifiers for the Spawrious track: a small plain-torch CNN (CPU default) and an optional pretrained
backbone through timm for GPU users (the paper uses an ImageNet ResNet-50, Lynch et al. 2023 §5).

Every model exposes `features(x) -> [batch, dim]` and `head` so feature-matching methods (CORAL) can use them.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Three conv blocks + global average pooling; ~25k parameters at width 16."""

    def __init__(self, num_classes: int = 4, width: int = 16):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.body = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 4 * width))
        self.dim = 4 * width
        self.head = nn.Linear(self.dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # x: [batch, 3, H, W] -> [batch, dim]
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TimmBackbone(nn.Module):
    """A timm model with its classifier removed (`num_classes=0`), plus a linear head."""

    def __init__(self, name: str, num_classes: int, pretrained_path: str | None):
        super().__init__()
        try:
            import timm
        except ImportError as err:
            raise ImportError("model 'timm:<name>' needs timm (`pip install timm`); the default is 'small_cnn'") from err
        kwargs = {"pretrained_cfg_overlay": {"file": pretrained_path}} if pretrained_path else {}
        # pretrained weights only from a local file: the project never downloads at run time
        self.backbone = timm.create_model(name, pretrained=bool(pretrained_path), num_classes=0, **kwargs)
        self.dim = self.backbone.num_features
        self.head = nn.Linear(self.dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(name: str = "small_cnn", num_classes: int = 4, width: int = 16,
                pretrained_path: str | None = None) -> nn.Module:
    """`small_cnn`, or `timm:<architecture>` (e.g. `timm:resnet50`) with an optional local weights file."""
    if name == "small_cnn":
        return SmallCNN(num_classes, width)
    if name.startswith("timm:"):
        return TimmBackbone(name.removeprefix("timm:"), num_classes, pretrained_path)
    raise ValueError(f"unknown model {name!r}; expected 'small_cnn' or 'timm:<architecture>'")
