"""The best epoch so far by ``val/loss`` (the full negative ELBO at beta = 1), and early stopping.

The validation loss the README recommends choosing by: the epoch with the lowest ``val/loss`` is
the best one (``checkpoints/best.pt``, ``evaluate --best``); with ``patience = N`` training stops
once N epochs in a row have not improved it. NaN never improves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class BestEpoch:
    """The counters a checkpoint keeps: ``best_val_loss``, ``best_epoch``, ``bad_epochs``, ``stopped_early``."""

    best_val_loss: float = float("inf")
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False

    def update(self, epoch: int, val_loss: float, patience: int = 0) -> None:
        """Record epoch ``epoch``'s ``val/loss``; stop early after ``patience`` epochs without improving (0: never)."""
        if val_loss < self.best_val_loss:  # NaN never improves
            self.best_val_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
        else:
            self.bad_epochs += 1
        self.stopped_early = bool(patience) and self.bad_epochs >= patience

    def improved(self, epoch: int) -> bool:
        """Whether ``epoch`` (just finished) is the best so far."""
        return epoch > 0 and self.best_epoch == epoch

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key in asdict(self):
            setattr(self, key, state[key])
