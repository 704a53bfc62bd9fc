"""Test model whose weights INT8 cannot represent: one huge weight per row swamps the scale."""

import torch


class OutlierMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x)
