"""What an evaluation will cost, said before it is paid, and a time limit with a defined outcome.

An IWAE pass with K = 5000 or an AIS pass from a flow's posterior can take minutes to hours. Each
estimator of ``pyrovae evaluate`` runs through a :class:`Budget`: once its first batch (IWAE) or its
first annealing step (AIS) is done, it says how long the whole pass will take at that rate, when
that is more than :data:`TELL_ABOVE_S` seconds. With a time limit (``--time-limit``, for the whole
evaluation), an estimator stops after the batch during which the limit passed, and the evaluation
reports the estimate over the datapoints done (at least one batch of each estimator), logs how many
(``eval.iwae_n``, ``ais.subset``) and tags the run ``pyrovae.evaluate.truncated``: a number over
fewer points, never a number presented as covering all of them.
"""

from __future__ import annotations

import logging
import time

#: passes expected to take less than this are not announced
TELL_ABOVE_S = 10.0

log = logging.getLogger("pyrovae")


def duration(seconds: float) -> str:
    """``75.0`` -> ``1 min 15 s``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    return f"{minutes // 60} h {minutes % 60} min"


class Budget:
    """One estimator's pass over ``total`` units (datapoints, or annealing steps) of ``points`` datapoints.

    ``progress(n)``: ``n`` more units done (forwarded to ``bar``); the first call tells the expected
    duration. ``stop()``: whether the ``deadline`` (``time.monotonic()`` seconds; None: none) passed.
    """

    def __init__(self, label: str, total: int, points: int, bar=None, deadline: float | None = None):
        self.label, self.total, self.points, self.bar, self.deadline = label, total, points, bar, deadline
        self.done, self.started, self.told = 0, time.monotonic(), False

    def progress(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)
        self.done += n
        if not self.told:
            self.told = True
            expected = (time.monotonic() - self.started) * self.total / self.done
            if expected > TELL_ABOVE_S:
                limit = ""
                if self.deadline is not None and self.started + expected > self.deadline:
                    limit = f"; the time limit stops it after about {duration(self.deadline - self.started)}"
                log.info(f"{self.label} on {self.points} datapoints: about {duration(expected)}{limit}")

    def stop(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline
