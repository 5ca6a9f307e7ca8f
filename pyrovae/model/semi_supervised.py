r"""The semi-supervised M2 model of Kingma et al. (2014): the label is a latent variable, observed
when it is known.

.. math::
    y \sim \mathrm{Cat}(1/C),\quad z \sim p(z),\quad x \sim p(x \mid z, y);\qquad
    q(y \mid x)\, q(z \mid x, y)

For a labelled datapoint the ELBO is that of the conditional VAE plus :math:`\log p(y)`; for an
unlabelled one y is a latent site of the guide, marked ``infer={"enumerate": "parallel"}``, so
``TraceEnum_ELBO`` (``train.elbo = "enum"``) sums it out exactly,

.. math::
    \mathcal{U}(x) = \sum_y q(y|x)\,\big[\mathcal{L}(x, y) - \log q(y|x)\big],

as do validation and IWAE: with ``y`` optional, every estimate is of log p(x), the label summed
out. Training adds the classification term :math:`\alpha \log q(y|x)` on labelled data (a
``pyro.factor`` in the model, in training mode only: a training device like KL annealing, never
part of a reported bound), with :math:`\alpha` = ``classifier_weight`` per labelled datapoint
(Kingma et al. use :math:`\alpha = 0.1 N` over the whole data set). :meth:`classify` is the
classifier's prediction, logged as ``val/accuracy`` and ``test/accuracy`` every epoch.

References: Kingma, Rezende, Mohamed & Welling, "Semi-Supervised Learning with Deep Generative
Models", NeurIPS 2014 (M2); Pyro's ``examples/vae/ss_vae_M2.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.model.base import Count
from pyrovae.model.cvae import ConditionalVAE
from pyrovae.model.nets import Encoder, with_label
from pyrovae.model.vae import ComponentSpec


class SemiSupervisedVAE(ConditionalVAE):
    """M2: sites ``y`` (observed with a label, else latent and enumerated by the guide), ``z``, ``x``.

    ``classifier_hidden`` sizes the MLP of q(y|x); the other arguments are the
    :class:`~pyrovae.model.cvae.ConditionalVAE`'s.
    """

    pyro_name = "m2"

    def __init__(
        self,
        prior: nn.Module | ComponentSpec = "standard_normal",
        guide: nn.Module | ComponentSpec = "diagonal_normal",
        likelihood: nn.Module | ComponentSpec = "bernoulli",
        *,
        latent_dim: Count,
        data_shape: Sequence[int],
        num_classes: Count,
        conditional_prior: bool = False,
        classifier_hidden: list[int] = (500,),
        classifier_weight: float = 50.0,
    ):
        super().__init__(
            prior,
            guide,
            likelihood,
            latent_dim=latent_dim,
            data_shape=data_shape,
            num_classes=num_classes,
            conditional_prior=conditional_prior,
        )
        self.encoder_y = Encoder(self.data_shape, list(classifier_hidden))
        self.head_y = nn.Linear(self.encoder_y.out_features, self.num_classes)
        self.classifier_weight = float(classifier_weight)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's logits of q(y|x), shape ``(*batch, num_classes)``."""
        return self.head_y(self.encoder_y(x))

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable label under q(y|x), shape ``(B,)``."""
        return self.logits(x).argmax(-1)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        self.register()
        labelled = y is not None
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=x.new_zeros(self.num_classes)), obs=y)
            z = pyro.sample("z", self.prior_given(y))
            pyro.sample("x", self.likelihood(with_label(z, y, self.num_classes)), obs=x)
            if labelled and self.training and self.classifier_weight:  # a training device, never scored
                pyro.factor(
                    "classification", self.classifier_weight * dist.Categorical(logits=self.logits(x)).log_prob(y)
                )

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        self.register()
        with pyro.plate("data", x.shape[0]):
            if y is None:
                y = pyro.sample("y", dist.Categorical(logits=self.logits(x)), infer={"enumerate": "parallel"})
            pyro.sample("z", self.posterior(with_label(x.flatten(1), y, self.num_classes)))
