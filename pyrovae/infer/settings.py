"""What the trainer reads: the ``[train]`` and ``[validation]`` sections, as keyword arguments.

``Trainer(vae, data, epochs=5, lr=3e-4)`` and ``--set train.epochs=5 --set train.lr=3e-4``
go through the same class, so a value refused in a TOML file is refused the same way in a
notebook.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pyrovae.settings import Settings


class TrainSettings(Settings):
    """How the trainer steps: the objective, the optimizer and its schedule, KL warm-up, early stopping."""

    section = "train"

    epochs: int = Field(10, ge=1, description="passes over the training set")
    batch_size: int = Field(128, ge=1, description="datapoints per step (the global batch under torchrun)")
    lr: float = Field(1e-3, gt=0.0, description="base learning rate")
    seed: int = Field(0, ge=0, description="seeds torch, NumPy and Python's RNGs")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'")
    elbo: Literal["trace", "meanfield", "enum", "iwae", "renyi", "tracegraph"] = Field(
        "trace",
        description="the training objective: Trace_ELBO (Monte Carlo KL), TraceMeanField_ELBO (closed-form KL "
        "where it exists), TraceEnum_ELBO (discrete guide sites marked for parallel enumeration summed out), "
        "the importance-weighted bound with num_particles draws (iwae), the Renyi bound of renyi_alpha (renyi), "
        "or the ELBO with score-function gradients for latent sites without rsample (tracegraph); "
        "validation is the ELBO at beta = 1 whatever trains",
    )
    num_particles: int = Field(
        1, ge=1, description="draws of the latent sites per datapoint in the objective (K of iwae)"
    )
    iwae_gradient: Literal["standard", "dreg"] = Field(
        "standard",
        description="iwae: the gradient estimator, Burda et al.'s (standard) or the doubly reparameterized one "
        "of Tucker et al. 2019 (dreg: lower-variance encoder gradients as K grows; every latent site reparameterized)",
    )
    renyi_alpha: float = Field(
        0.5, ge=0.0, lt=1.0, description="renyi: the alpha of the Renyi bound (0 = iwae, 1 = the ELBO: refused)"
    )
    free_bits: float = Field(
        0.0,
        ge=0.0,
        description="nats per latent dimension the KL term cannot go below, on "
        "the batch mean (Kingma et al. 2016; per site where q or p does not factorize); 0 = off",
    )
    jit: bool | Literal["auto"] = Field(
        "auto",
        description="JitTrace_ELBO / JitTraceMeanField_ELBO (torch.jit.trace of the loss): true, false, or auto "
        "(traced where the model allows it, else eager with a one-line note; the run records the path taken)",
    )
    beta_start: float = Field(1.0, gt=0.0, description="KL weight at the first step (> 0)")
    warmup_epochs: float = Field(
        0.0, ge=0.0, description="linear: epochs to raise beta from beta_start to beta (0 = beta_start throughout)"
    )
    beta: float = Field(
        1.0, gt=0.0, description="the KL weight after the warm-up (> 1: a beta-VAE, Higgins et al. 2017)"
    )
    beta_schedule: Literal["linear", "constant", "cyclical"] = Field(
        "linear",
        description="linear from beta_start to beta over warmup_epochs; constant beta; cyclical: "
        "beta_cycles cycles over the run, each rising linearly from beta_start to beta over its first "
        "beta_ratio, then holding (Fu et al. 2019)",
    )
    beta_cycles: int = Field(4, ge=1, description="cyclical: the number of cycles over the run")
    beta_ratio: float = Field(0.5, gt=0.0, le=1.0, description="cyclical: the part of each cycle that rises")
    optimizer: str = Field(
        "adam", description="adam, adamw, or any torch optimizer by import path (torch.optim.SGD, package.module:Class)"
    )
    optimizer_args: dict = Field(
        default_factory=dict,
        description="keyword arguments of the optimizer besides "
        "lr (and weight_decay for adam/adamw), e.g. {momentum = 0.9}",
    )
    grad_clip: float = Field(
        0.0,
        ge=0.0,
        description="clip the gradients' global norm to this (0 = off); the "
        "epoch's mean norm before clipping is logged as train/grad_norm",
    )
    loss_reduction: Literal["sum", "mean"] = Field(
        "sum",
        description="the step's loss over the batch: sum (nats per batch, the default) or mean (nats per datapoint)",
    )
    weight_decay: float = Field(0.0, ge=0.0, description="L2 penalty (adam) or decoupled decay (adamw)")
    adam: Literal["auto", "fused", "foreach"] = Field(
        "auto", description="the optimizer's kernel: fused where torch has it, else foreach"
    )
    lr_schedule: str = Field(
        "constant",
        description="constant; cosine to lr_min over all steps; step: times lr_decay every "
        "lr_decay_epochs; or any torch LR scheduler by import path, stepped after every optimizer step",
    )
    lr_schedule_args: dict = Field(
        default_factory=dict,
        description="keyword arguments of a scheduler given by "
        "import path, e.g. {gamma = 0.999} for torch.optim.lr_scheduler.ExponentialLR",
    )
    lr_min: float = Field(0.0, ge=0.0, description="cosine: the learning rate at the last step")
    lr_decay: float = Field(0.1, gt=0.0, le=1.0, description="step: the factor applied every lr_decay_epochs")
    lr_decay_epochs: int = Field(30, ge=1, description="step: epochs between two decays")
    checkpoint_every: int = Field(1, ge=1, description="write checkpoints/last.pt every N epochs (and at the end)")
    patience: int = Field(0, ge=0, description="stop when val/loss has not improved for N epochs (0 = never)")
    labelled_every: int = Field(
        0,
        ge=0,
        description="semi-supervised data (data.labelled): a labelled batch after "
        "every N unlabelled ones, cycling the labelled rows (0 = each "
        "labelled row once per epoch, spread among the unlabelled)",
    )


class ValidationSettings(Settings):
    """``[validation]``: how every epoch validates (the ``val/*`` metrics, and ``test/*`` at the end):
    the batch, the seed of its draws, and an optional IWAE curve. Not ``pyrovae evaluate``, which
    estimates log p(x) of a trained run afterwards (its settings are its options, logged as ``eval.*``)."""

    section = "validation"

    batch_size: int = Field(1000, ge=1, description="datapoints per validation and test batch")
    seed: int = Field(0, ge=0, description="seed of the validation draws, fixed so runs compare")
    iwae_every: int = Field(
        0, ge=0, description="log val/nll_iwae every N epochs (0 = never; it costs K decoder passes)"
    )
    iwae_k: int = Field(100, ge=1, description="importance samples K of the per-epoch val/nll_iwae")
    iwae_n: int = Field(
        0,
        ge=0,
        description="score the per-epoch val/nll_iwae on the first N validation points (0 = all): a cheaper curve",
    )


#: the name of :class:`ValidationSettings` in pyrovae 0.2 (its ``[eval]`` table)
EvalSettings = ValidationSettings
