"""The run layer: config, MLflow (the only layer that imports it), checkpoints, the pipeline."""
