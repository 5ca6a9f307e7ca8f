"""pyrovae: variational autoencoders written the probabilistic-programming way.

A prior p(z), a likelihood p(x|z) and an amortized posterior q(z|x) -- three modules that
return distributions -- become a Pyro model/guide pair (:class:`pyrovae.vae.VAE`), trained
with ``SVI`` and validated with the same ELBO object, and logged to MLflow.
"""

__version__ = "0.1.0"
