"""Estimators of log p(x) beyond the ELBO (IWAE, AIS/BDMC) and posterior-collapse diagnostics.

- :mod:`pyrovae.infer.estimators.iwae`: the importance-weighted bound, per datapoint, chunked over K.
- :mod:`pyrovae.infer.estimators.ais`: annealed importance sampling with HMC, and BDMC bounds.
- :mod:`pyrovae.infer.estimators.diagnostics`: KL per latent dimension, active units.
"""

from pyrovae.infer.estimators.diagnostics import active_units, activity, has_kl_per_dimension, kl_per_dimension

__all__ = ["active_units", "activity", "has_kl_per_dimension", "kl_per_dimension"]
