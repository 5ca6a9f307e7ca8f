"""pyrovae: variational autoencoders written the probabilistic-programming way.

A prior p(z), a likelihood p(x|z) and an amortized posterior q(z|x) -- three modules that
return distributions -- become a Pyro model/guide pair (:class:`VAE`), trained by SVI with
Pyro's ELBO as a torch loss (:class:`Trainer`), validated with the same ELBO object, scored by
tighter estimators (:func:`iwae`, :func:`ais`) and tracked in MLflow (:func:`train`). Any other Pyro
model/guide pair -- several latent sites, labels, a discrete latent -- trains and scores the same
way (a :class:`Model` subclass with ``model``/``guide`` methods; :mod:`pyrovae.model.base`)::

    from pyrovae import VAE, Trainer, load_data, train
    data = load_data("synthetic")
    vae = VAE(prior="standard_normal", guide="diagonal_normal", likelihood="bernoulli",
              latent_dim=8, data_shape=data.data_shape)
    Trainer(vae, data, epochs=2).fit()          # no logging, or:
    train(vae, data, epochs=2, tracking={"experiment": "demo"})

Every name below is imported on first use, so ``import pyrovae`` stays light (MLflow is
imported only by the run layer).
"""

from __future__ import annotations

import importlib

__version__ = "0.3.0"

#: public name -> the module that defines it, by layer
_EXPORTS = {
    # model: the model interface, the VAE and its components
    "Model": "pyrovae.model.base",
    "MODELS": "pyrovae.model.models",
    "build_model": "pyrovae.model.models",
    "VAE": "pyrovae.model.vae",
    "build_vae": "pyrovae.model.vae",
    "PRIORS": "pyrovae.model.priors",
    "GUIDES": "pyrovae.model.guides",
    "LIKELIHOODS": "pyrovae.model.likelihoods",
    "StandardNormal": "pyrovae.model.priors",
    "MixtureOfGaussians": "pyrovae.model.priors",
    "VampPrior": "pyrovae.model.priors",
    "FlowPrior": "pyrovae.model.priors",
    "DiagonalNormal": "pyrovae.model.guides",
    "LowRankNormal": "pyrovae.model.guides",
    "InverseAutoregressiveFlow": "pyrovae.model.guides",
    "NeuralSplineFlow": "pyrovae.model.guides",
    "EncoderGuide": "pyrovae.model.guides.base",
    "Bernoulli": "pyrovae.model.likelihoods",
    "ContinuousBernoulli": "pyrovae.model.likelihoods",
    "Gaussian": "pyrovae.model.likelihoods",
    "DiscretizedLogistic": "pyrovae.model.likelihoods",
    "Likelihood": "pyrovae.model.likelihoods.base",
    "DecodedLikelihood": "pyrovae.model.likelihoods.base",
    "Encoder": "pyrovae.model.nets",
    "Decoder": "pyrovae.model.nets",
    "mlp": "pyrovae.model.nets",
    # data
    "load_data": "pyrovae.data",
    "Splits": "pyrovae.data",
    "DataSettings": "pyrovae.data",
    "PPCA": "pyrovae.data",
    # inference: the loss, the trainer and its callbacks, the estimators
    "ELBOLoss": "pyrovae.infer.elbo",
    "make_elbo": "pyrovae.infer.elbo",
    "elbo_terms": "pyrovae.infer.terms",
    "validate": "pyrovae.infer.terms",
    "datapoint_terms": "pyrovae.infer.terms",
    "ScaleLatents": "pyrovae.infer.elbo",
    "check_model": "pyrovae.infer.interface",
    "Trainer": "pyrovae.infer.trainer",
    "TrainSettings": "pyrovae.infer.settings",
    "ValidationSettings": "pyrovae.infer.settings",
    "make_optimizer": "pyrovae.infer.optim",
    "Callback": "pyrovae.infer.callbacks",
    "ProgressBar": "pyrovae.infer.callbacks",
    "IWAEEvery": "pyrovae.infer.callbacks",
    "BitsPerDim": "pyrovae.infer.callbacks",
    "iwae": "pyrovae.infer.estimators.iwae",
    "ais": "pyrovae.infer.estimators.ais",
    "bdmc": "pyrovae.infer.estimators.ais",
    "AISSettings": "pyrovae.infer.estimators.ais",
    "kl_per_dimension": "pyrovae.infer.estimators.diagnostics",
    "active_units": "pyrovae.infer.estimators.diagnostics",
    "activity": "pyrovae.infer.estimators.diagnostics",
    "active_units_per_site": "pyrovae.infer.estimators.diagnostics",
    # run: tracked training, runs read back, MLflow
    "train": "pyrovae.run.pipeline",
    "train_config": "pyrovae.run.pipeline",
    "resume": "pyrovae.run.resume",
    "RunResult": "pyrovae.run.pipeline",
    "train_study": "pyrovae.run.study",
    "search": "pyrovae.run.search",
    "SearchResult": "pyrovae.run.search",
    "compare": "pyrovae.run.compare",
    "load_vae": "pyrovae.run.restore",
    "evaluate_run": "pyrovae.run.evaluation",
    "MlflowRun": "pyrovae.run.tracking",
    "MlflowLogger": "pyrovae.run.logger",
    "Checkpointer": "pyrovae.run.checkpoint",
    "MlflowSettings": "pyrovae.run.config",
    "load_config": "pyrovae.run.config",
    "UserError": "pyrovae.errors",
}
_RENAMED = {"load_config": "load"}
#: pyrovae 0.2's names, still importable with a deprecation warning: old -> new
_DEPRECATED = {"evaluate": "validate", "EvalSettings": "ValidationSettings"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _DEPRECATED:
        import warnings

        new = _DEPRECATED[name]
        warnings.warn(f"pyrovae.{name} is now pyrovae.{new}; the old name will go", DeprecationWarning, stacklevel=2)
        return __getattr__(new)
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pyrovae' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
