"""What the amortized guides share: encoder features h(x) and a Gaussian head on them."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import softplus

from pyrovae.model.nets import Encoder


class EncoderGuide(nn.Module):
    r"""An MLP encoder ``h = Encoder(x)`` plus a linear head from h to ``outputs`` numbers.

    Shapes: ``x`` is ``(B, *data_shape)``, ``h`` is ``(B, features)``, the head's output
    ``(B, outputs)``. Subclasses turn the head's numbers (and h, for flows) into q(z|x).
    """

    def __init__(self, data_shape: tuple[int, ...], hidden: list[int], activation: str, outputs: int):
        super().__init__()
        self.encoder = Encoder(data_shape, list(hidden), activation)
        self.head = nn.Linear(self.encoder.out_features, outputs)

    @property
    def features(self) -> int:
        return self.encoder.out_features

    @staticmethod
    def positive(raw: torch.Tensor) -> torch.Tensor:
        """``softplus(raw) + 1e-5``: positive, without the overflow of ``exp``."""
        return softplus(raw) + 1e-5
