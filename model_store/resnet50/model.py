"""ResNet-50 v1.5; as the archive's modelFile it may define only one class (BaseHandler's rule)."""

from __future__ import annotations

import torch
from resnet_blocks import make_stage
from torch import nn


class ResNet50(nn.Module):
    """Parameter names follow the common layout, so published ResNet-50 state dicts load as is."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        # 3, 4, 6, 3 bottlenecks; each stage after the first halves the resolution.
        self.layer1 = make_stage(64, width=64, blocks=3, stride=1)
        self.layer2 = make_stage(256, width=128, blocks=4, stride=2)
        self.layer3 = make_stage(512, width=256, blocks=6, stride=2)
        self.layer4 = make_stage(1024, width=512, blocks=3, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
