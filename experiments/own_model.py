"""A model of your own: labels and two latent sites, a plain Pyro model/guide pair pyrovae trains and scores."""

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae import Model, mlp


class TwoLevelCVAE(Model):
    """z2 ~ N(0, I), z1 | z2 ~ N(mu(z2), sigma(z2)), x | z1, y ~ Bernoulli(f(z1, y));
    guide q(z1 | x, y) q(z2 | z1). Scored as log p(x | y)."""

    def __init__(self, data_shape, num_classes, z1: int = 16, z2: int = 4, hidden: int = 256):
        super().__init__()
        self.data_shape, self.num_classes, self.z2 = tuple(data_shape), num_classes, z2
        pixels = math.prod(data_shape)
        self.encoder = mlp([pixels + num_classes, hidden, 2 * z1])  # q(z1 | x, y)
        self.upper = mlp([z1, hidden, 2 * z2])  # q(z2 | z1)
        self.prior_z1 = mlp([z2, hidden, 2 * z1])  # p(z1 | z2)
        self.decoder = mlp([z1 + num_classes, hidden, pixels])  # p(x | z1, y)

    @staticmethod
    def normal(out):
        loc, raw = out.chunk(2, -1)
        return dist.Normal(loc, nn.functional.softplus(raw) + 1e-4).to_event(1)

    def with_label(self, h, y):  # h: (..., B, n); the label, one-hot, beside every sample of it
        onehot = nn.functional.one_hot(y, self.num_classes).to(h.dtype)
        return torch.cat([h, onehot.expand(*h.shape[:-1], self.num_classes)], -1)

    def model(self, x, y):
        pyro.module("two_level_cvae", self)
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(self.z2), 1.0).to_event(1))
            z1 = pyro.sample("z1", self.normal(self.prior_z1(z2)))
            logits = self.decoder(self.with_label(z1, y)).reshape(*z1.shape[:-1], *self.data_shape)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(len(self.data_shape)), obs=x)

    def guide(self, x, y):
        pyro.module("two_level_cvae", self)
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", self.normal(self.encoder(self.with_label(x.flatten(1), y))))
            pyro.sample("z2", self.normal(self.upper(z1)))
