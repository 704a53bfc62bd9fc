"""Test model definition: exactly one class, as BaseHandler requires of a model file."""

import torch


class TinyLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x)
