"""AlexNet with torchvision's parameter layout (the "one weird trick" variant torchvision ships).

Nothing here imports torchvision. Module indices, and so the state-dict keys, are torchvision's:
``features.{0,3,6,8,10}.{weight,bias}`` and ``classifier.{1,4,6}.{weight,bias}``, so torchvision's ImageNet
file ``alexnet-owt-7be5be79.pth`` loads with ``strict=True``. LPIPS (``net='alex'``) uses the five ReLU
outputs of ``features`` (:data:`ALEXNET_LPIPS_SLICES`).
"""
from __future__ import annotations

import torch
from torch import nn

from desra.registry import ARCH_REGISTRY

#: ``features`` modules ending each of LPIPS's five AlexNet stages (relu1 ... relu5), as half-open ranges.
ALEXNET_LPIPS_SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))
#: Channels of those stages.
ALEXNET_LPIPS_CHANNELS = (64, 192, 384, 256, 256)


def alexnet_features() -> nn.Sequential:
    """torchvision's ``AlexNet.features``: five convolutions (11x11 s4, 5x5, then three 3x3), three 3x3/2 max-pools.

    Input B x 3 x H x W (ImageNet-normalised for classification); output B x 256 x H' x W'
    (H' = 6 for a 224 x 224 input).
    """
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


@ARCH_REGISTRY.register()
class AlexNet(nn.Module):
    """AlexNet classifier (Krizhevsky 2014, torchvision's layout). Input B x 3 x H x W, output B x classes logits."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = alexnet_features()
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(p=dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
