r"""What one training step does with a batch's loss: the gradient, the optimizer and the schedule.

Given :math:`L`, the negative (annealed) ELBO summed over this process's rows of the batch, a step

1. back-propagates :math:`L` (``train.loss_reduction = "sum"``) or :math:`L / B` with :math:`B`
   the rows of the *global* batch (``"mean"``: whoever holds which rows, every process divides by
   the same number, so the averaged gradient is the single-process one);
2. calls each callback's ``on_after_backward`` (the gradients are there to read or change);
3. clips the gradient's global norm to ``train.grad_clip`` (if set; the norm is kept for
   ``train/grad_norm``);
4. steps the optimizer, clears the gradients and steps the schedule (once per optimizer step).

The trainer decides *when* (its loop) and *where* (:mod:`~pyrovae.infer.strategy`); this decides
what the parameters do.
"""

from __future__ import annotations

import torch

from pyrovae.infer.optim import make_optimizer, make_scheduler


class GradientStep:
    """``GradientStep(parameters, settings, steps_per_epoch, strategy)``; ``step(trainer, loss, index, rows)``.

    ``optimizer`` and ``scheduler`` are the torch objects (from ``train.optimizer`` and
    ``train.lr_schedule``), which a checkpoint saves; ``hooks`` the callbacks that see the gradient.
    """

    def __init__(self, parameters, settings, steps_per_epoch: int, strategy):
        self.parameters = list(parameters)
        self.settings, self.strategy = settings, strategy
        s = settings
        self.optimizer = make_optimizer(self.parameters, s.optimizer, s.lr, s.weight_decay, s.adam, s.optimizer_args)
        self.scheduler = make_scheduler(self.optimizer, s, steps_per_epoch)
        self.hooks: list = []
        self.grad_norms: list[float] = []

    def step(self, trainer, loss: torch.Tensor, index: int, rows: int) -> None:
        """Update the parameters from ``loss`` of batch ``index`` (``rows`` of it on this process)."""
        if self.settings.loss_reduction == "mean":
            loss = loss / self.strategy.global_rows(trainer.data, self.settings.batch_size, index, rows)
        self.strategy.backward(loss)
        for cb in self.hooks:
            cb.on_after_backward(trainer)
        if self.settings.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.settings.grad_clip)
            self.grad_norms.append(float(norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def epoch_metrics(self) -> dict[str, float]:
        """``train/lr`` at the end of the epoch and, when clipping, the epoch's mean ``train/grad_norm``;
        starts the next epoch's count."""
        out = {"train/lr": self.scheduler.get_last_lr()[0]}
        if self.grad_norms:
            out["train/grad_norm"] = sum(self.grad_norms) / len(self.grad_norms)
        self.grad_norms = []
        return out
