"""What the trainer reads: the ``[train]`` and ``[eval]`` sections, as keyword arguments.

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
    elbo: Literal["trace", "meanfield", "enum"] = Field(
        "trace",
        description="Trace_ELBO (Monte Carlo KL), TraceMeanField_ELBO (closed-form KL where it exists) or "
        "TraceEnum_ELBO (discrete guide sites marked for parallel enumeration summed out)",
    )
    num_particles: int = Field(1, ge=1, description="draws of the latent sites per datapoint in the ELBO")
    jit: bool = Field(False, description="JitTrace_ELBO / JitTraceMeanField_ELBO (torch.jit.trace of the loss)")
    beta_start: float = Field(1.0, gt=0.0, le=1.0, description="KL weight at the first step (> 0)")
    warmup_epochs: float = Field(0.0, ge=0.0, description="epochs to raise beta linearly to 1 (0 = no warm-up)")
    optimizer: Literal["adam", "adamw"] = Field("adam", description="torch.optim.Adam or AdamW")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 penalty (adam) or decoupled decay (adamw)")
    adam: Literal["auto", "fused", "foreach"] = Field(
        "auto", description="the optimizer's kernel: fused where torch has it, else foreach"
    )
    lr_schedule: Literal["constant", "cosine", "step"] = Field(
        "constant", description="constant; cosine to lr_min over all steps; step: times lr_decay every lr_decay_epochs"
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


class EvalSettings(Settings):
    """How every epoch validates: the batch, the seed of its draws, and an optional IWAE curve."""

    section = "eval"

    batch_size: int = Field(1000, ge=1, description="datapoints per validation and test batch")
    seed: int = Field(0, ge=0, description="seed of the evaluation samples, fixed so runs compare")
    iwae_every: int = Field(
        0, ge=0, description="log val/nll_iwae every N epochs (0 = never; it costs K decoder passes)"
    )
    iwae_k: int = Field(100, ge=1, description="importance samples K of the per-epoch val/nll_iwae")
    iwae_n: int = Field(
        0,
        ge=0,
        description="score the per-epoch val/nll_iwae on the first N validation points (0 = all): a cheaper curve",
    )
