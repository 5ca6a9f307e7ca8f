"""The inference layer: the ELBO as a loss module, its terms, the trainer and the estimators."""
