r"""Models written as a pyrovae user writes them (plain Pyro model/guide classes, site names of their
own), whose log p(x) and exact posterior are known in closed form (float64 throughout).

**Two levels** (:class:`TwoLevelLinear`), ``top -> middle -> pixels``:

.. math::
    z_2 \sim N(0, I),\quad z_1 \mid z_2 \sim N(A z_2, s_1^2 I),\quad x \mid z_1 \sim N(W z_1 + b, \sigma^2 I),

so :math:`z_1 \sim N(0, \Sigma_1)`, :math:`\Sigma_1 = AA^T + s_1^2 I`, and
:math:`p(x) = N(x; b, W\Sigma_1W^T + \sigma^2 I)`. Since x depends on z2 only through z1,
:math:`p(z_2 \mid z_1, x) = p(z_2 \mid z_1)`, so the guide :math:`q(z_1|x)\,q(z_2|z_1)` with both
factors Gaussian posteriors *is* the exact posterior; ``perturb`` widens and shifts q(z1|x).

**A label summed out** (:class:`LabelledLinear`), a semi-supervised M2 small enough to sum by hand:

.. math:: y \sim \mathrm{Cat}(\pi),\quad z \sim N(0, I),\quad x \mid y, z \sim N(Wz + B_y, \sigma^2 I),

so :math:`p(x) = \sum_y \pi_y N(x; B_y, WW^T + \sigma^2 I)`. Its guide enumerates y with
:math:`q(y|x)` (exact, or ``label_guess`` mixed with uniform) and draws z from the exact
:math:`p(z|x, y)`: then the ELBO is :math:`\log p(x) - \mathrm{KL}(q(y|x)\,\|\,p(y|x))` exactly, and
every IWAE draw equals p(x) exactly (:math:`q(y|x)` cancels). :class:`ConditionalLinear` is the
same model given y, a conditional model written as a CVAE: log p(x | y).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import MultivariateNormal

from pyrovae import VAE, Model


def gaussian_posterior(prior_cov: torch.Tensor, weight: torch.Tensor, noise_var: float):
    """For z ~ N(0, prior_cov), x = W z + e, e ~ N(0, noise_var I): (gain G, covariance C) with
    p(z | x) = N(G (x - offset), C)."""
    cov = torch.linalg.inv(torch.linalg.inv(prior_cov) + weight.T @ weight / noise_var)
    return cov @ weight.T / noise_var, cov


class TwoLevelLinear(Model):
    """A two-level linear-Gaussian VAE (sites ``top``, ``middle``, ``pixels``) with its exact guide."""

    def __init__(self, data_dim: int = 6, middle_dim: int = 3, top_dim: int = 2, seed: int = 0, perturb: float = 0.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
        self.register_buffer("A", randn(middle_dim, top_dim))
        self.register_buffer("W", randn(data_dim, middle_dim))
        self.register_buffer("b", randn(data_dim))
        self.s1, self.sigma, self.perturb = 0.7, 0.5, perturb
        cov1 = self.A @ self.A.T + self.s1**2 * torch.eye(middle_dim, dtype=torch.float64)
        self.register_buffer("cov1", cov1)
        gain1, post1 = gaussian_posterior(cov1, self.W, self.sigma**2)
        gain2, post2 = gaussian_posterior(torch.eye(top_dim, dtype=torch.float64), self.A, self.s1**2)
        self.register_buffer("gain1", gain1)
        self.register_buffer("tril1", torch.linalg.cholesky(post1) * (1 + perturb))
        self.register_buffer("gain2", gain2)
        self.register_buffer("tril2", torch.linalg.cholesky(post2))
        self.dummy = torch.nn.Parameter(torch.zeros(()))  # something for an optimizer to hold

    def model(self, x):
        pyro.module("two_level", self)
        with pyro.plate("data", x.shape[0]):
            top = pyro.sample("top", dist.Normal(torch.zeros_like(self.A[0]), 1.0).to_event(1))
            middle = pyro.sample("middle", dist.Normal(top @ self.A.T, self.s1).to_event(1))
            pyro.sample(
                "pixels", dist.Normal(middle @ self.W.T + self.b + 0 * self.dummy, self.sigma).to_event(1), obs=x
            )

    def guide(self, x):
        pyro.module("two_level", self)
        with pyro.plate("data", x.shape[0]):
            loc = (x - self.b) @ self.gain1.T + self.perturb * 0.3
            middle = pyro.sample("middle", dist.MultivariateNormal(loc, scale_tril=self.tril1))
            pyro.sample("top", dist.MultivariateNormal(middle @ self.gain2.T, scale_tril=self.tril2))

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.cov1 @ self.W.T + self.sigma**2 * torch.eye(len(self.b), dtype=torch.float64)
        return MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)

    def sample(self, n: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        top = torch.randn(n, self.A.shape[1], generator=g, dtype=torch.float64)
        middle = top @ self.A.T + self.s1 * torch.randn(n, self.A.shape[0], generator=g, dtype=torch.float64)
        return middle @ self.W.T + self.b + self.sigma * torch.randn(n, len(self.b), generator=g, dtype=torch.float64)


class LabelledLinear(Model):
    """y (3 classes, summed out) and z -> x; the guide enumerates y (site ``digit``; ``code`` for z)."""

    def __init__(
        self, data_dim: int = 5, latent_dim: int = 2, classes: int = 3, seed: int = 0, label_guess: float = 0.0
    ):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
        self.register_buffer("W", randn(data_dim, latent_dim))
        self.register_buffer("B", 2 * randn(classes, data_dim))
        self.register_buffer("pi", torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)[:classes])
        self.sigma, self.label_guess = 0.6, label_guess
        gain, post = gaussian_posterior(torch.eye(latent_dim, dtype=torch.float64), self.W, self.sigma**2)
        self.register_buffer("gain", gain)
        self.register_buffer("tril", torch.linalg.cholesky(post))
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def marginal(self):
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.W.shape[0], dtype=torch.float64)
        return MultivariateNormal(self.B, covariance_matrix=cov)  # batch (classes,)

    def posterior_y(self, x):
        joint = self.pi.log() + self.marginal().log_prob(x.unsqueeze(-2))  # (..., classes)
        exact = (joint - joint.logsumexp(-1, keepdim=True)).exp()
        return (1 - self.label_guess) * exact + self.label_guess / len(self.pi)

    def model(self, x, y=None):
        pyro.module("labelled", self)
        with pyro.plate("data", x.shape[0]):
            digit = pyro.sample("digit", dist.Categorical(self.pi), obs=y)
            code = pyro.sample("code", dist.Normal(torch.zeros_like(self.W[0]), 1.0).to_event(1))
            pyro.sample(
                "x", dist.Normal(code @ self.W.T + self.B[digit] + 0 * self.dummy, self.sigma).to_event(1), obs=x
            )

    def guide(self, x, y=None):
        pyro.module("labelled", self)
        with pyro.plate("data", x.shape[0]):
            if y is None:
                y = pyro.sample("digit", dist.Categorical(self.posterior_y(x)), infer={"enumerate": "parallel"})
            loc = (x - self.B[y]) @ self.gain.T
            pyro.sample("code", dist.MultivariateNormal(loc, scale_tril=self.tril))

    def log_px(self, x):
        return (self.pi.log() + self.marginal().log_prob(x.unsqueeze(-2))).logsumexp(-1)

    def elbo(self, x):
        """log p(x) - KL(q(y|x) || p(y|x)), exact."""
        q = self.posterior_y(x)
        exact = self.posterior_y_exact(x)
        return self.log_px(x) - (q * (q.log() - exact.log())).sum(-1)

    def posterior_y_exact(self, x):
        joint = self.pi.log() + self.marginal().log_prob(x.unsqueeze(-2))
        return (joint - joint.logsumexp(-1, keepdim=True)).exp()

    def sample(self, n: int, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        y = torch.multinomial(self.pi, n, replacement=True, generator=g)
        z = torch.randn(n, self.W.shape[1], generator=g, dtype=torch.float64)
        return z @ self.W.T + self.B[y] + self.sigma * torch.randn(
            n, self.W.shape[0], generator=g, dtype=torch.float64
        ), y


class ConditionalLinear(LabelledLinear):
    """:class:`LabelledLinear` made conditional (``y`` required: scored as log p(x | y)) and written
    as a CVAE is: the decoder reads ``[z, one_hot(y)]`` and the encoder ``[x, one_hot(y)]``, each
    through one linear map (``[W, B^T]`` and ``[G, -G B^T]``): the exact posterior p(z|x, y) again,
    so every IWAE draw is p(x|y) = N(x; B_y, WW^T + sigma^2 I) exactly."""

    def one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(y, len(self.pi)).to(self.W.dtype)

    def model(self, x, y):
        pyro.module("conditional", self)
        with pyro.plate("data", x.shape[0]):
            code = pyro.sample("code", dist.Normal(torch.zeros_like(self.W[0]), 1.0).to_event(1))
            label = self.one_hot(y).expand(*code.shape[:-1], len(self.pi))  # beside each draw of z
            mean = torch.cat([code, label], -1) @ torch.cat([self.W, self.B.T], -1).T
            pyro.sample("x", dist.Normal(mean + 0 * self.dummy, self.sigma).to_event(1), obs=x)

    def guide(self, x, y):
        pyro.module("conditional", self)
        with pyro.plate("data", x.shape[0]):
            loc = torch.cat([x, self.one_hot(y)], -1) @ torch.cat([self.gain, -self.gain @ self.B.T], -1).T
            pyro.sample("code", dist.MultivariateNormal(loc, scale_tril=self.tril))

    def log_px_given_y(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.marginal().log_prob(x.unsqueeze(-2)).gather(-1, y.unsqueeze(-1)).squeeze(-1)


class Tempered(VAE):
    """A VAE subclass with a parameter of its own: the likelihood's logits divided by a learned
    temperature (a pyrovae 0.2 run could not log it: the state_dict had an unexpected key)."""

    def __init__(self, temperature: float = 2.0, **vae_arguments):
        super().__init__(**vae_arguments)
        self.temperature = torch.nn.Parameter(torch.tensor(float(temperature)))

    def model(self, x):
        pyro.module("vae", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            logits = self.likelihood(z).base_dist.logits / self.temperature
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(len(self.data_shape)), obs=x)
