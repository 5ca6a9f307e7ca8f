"""Continue a likelihood table whose earlier runs are in an MLflow store this machine lacks.

``mlruns/`` is not in git: a fresh clone, or another machine, cannot reach the runs of an
earlier export. ``likelihood_table.py --earlier EXPORT`` carries them over from the committed
export itself: its rows (numbers, run ids and configs as exported) and, from ``EXPORT.npz``,
each evaluation's per-image test NLL by IWAE (nats, shape ``(n,)``, keyed by evaluation run id),
which the paired differences need. A variant and seed trained again replaces the earlier row;
``reproduced`` keeps both results (seeded, so they agree to the last digit on the same machine
and software; elsewhere floating-point sums may differ). A carried row without per-image numbers
keeps the paired difference it was exported with, against the baseline named in ``paired_with``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def per_image_file(export: Path) -> Path:
    return export.with_suffix(".npz")


def load_per_image(export: Path) -> dict[str, np.ndarray]:
    """Per-image test NLL (IWAE) by evaluation run id, as saved beside ``export``; ``{}`` if none."""
    path = per_image_file(export)
    if not path.exists():
        return {}
    with np.load(path) as saved:
        return {key: saved[key] for key in saved.files}


def save_per_image(arrays: dict[str, np.ndarray], export: Path) -> Path:
    path = per_image_file(export)
    np.savez_compressed(path, **arrays)
    return path


def _key(row: dict) -> tuple[str, int]:
    return row["variant"], row["seed"]


def _reproduction(earlier: dict, new: dict) -> dict:
    """An earlier row and the row that retrained its variant and seed, side by side."""
    keys = ("run_id", "evaluation_run_id", "nll_iwae", "nll_iwae_se")
    return {
        "variant": new["variant"],
        "seed": new["seed"],
        **{f"earlier_{k}": earlier[k] for k in keys},
        **{k: new[k] for k in keys},
        "exact": all(earlier[k] == new[k] for k in ("nll_iwae", "nll_iwae_se")),
    }


def carry_over(record: dict, earlier: dict) -> None:
    """Merge ``earlier`` (an export of this table) into ``record`` (this parent's export, with
    its ``table``), in place: the earlier rows keep their places, a retrained variant and seed
    taking its earlier row's; this parent's other rows follow. ``earlier_parents`` lists the
    parent runs the carried rows came from, with their exported runs."""
    own_runs = {run["run_id"] for run in record["runs"]}
    new = {_key(row): row for row in record["table"]}
    carried = [row for row in earlier["table"] if row["run_id"] not in own_runs]
    reference = next((row["evaluation_run_id"] for row in earlier["table"] if row["variant"] == "baseline"), None)
    for row in carried:  # exports before ``paired_with`` existed paired with their first baseline
        row.setdefault("parent_run_id", earlier["parent_run_id"])
        if row.get("nll_iwae_vs_baseline") is not None:
            row.setdefault("paired_with", reference)
    reproduced = [_reproduction(row, new[_key(row)]) for row in carried if _key(row) in new]
    table = [new.pop(_key(row)) if _key(row) in new else row for row in carried]
    record["table"] = table + [row for row in record["table"] if _key(row) in new]
    record["reproduced"] = earlier.get("reproduced", []) + reproduced
    record["earlier_parents"] = earlier.get("earlier_parents", []) + (
        [{key: earlier[key] for key in ("parent_run_id", "store", "runs")}]
        if earlier["parent_run_id"] != record["parent_run_id"]
        else []
    )
