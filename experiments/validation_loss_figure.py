"""The validation-loss study's figure: (a) the curves of the run where picking by reconstruction
costs most, with the epoch each criterion picks, (b) what each criterion costs in test NLL against
the best scored epoch, mean +- se over seeds (linear below 1 nat, logarithmic above where a cost
reaches tens)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CURVES = {
    "train/loss": "train/loss (objective)",
    "val/loss": "val/loss = -ELBO",
    "val/recon": "val/recon only",
    "val/nll_iwae": "val/nll_iwae",
    "test_curve/nll_iwae": "test NLL (IWAE): the outcome",
}
PICKED = ("recon", "-ELBO", "IWAE", "MSE")


def draw(record: dict, path: Path) -> Path:
    fig, (curves, costs) = plt.subplots(1, 2, figsize=(12, 4.4), dpi=110)
    run = example_run(record)
    for key, label in CURVES.items():
        steps, values = zip(*run["curves"][key])
        curves.plot(steps, values, label=label, lw=1.2)
    for i, name in enumerate(PICKED):
        curves.axvline(run["picks"][name]["epoch"], color=f"C{i + 5}", ls=":", label=f"picked by {name}")
    later = [v for key in CURVES for t, v in run["curves"][key] if t > run["epochs"] / 20]  # past the first drop
    curves.set_ylim(min(later) - 2, max(later) + 2)
    curves.set(xlabel="epoch", ylabel="nats per image", title=f"(a) {run['name']}")
    curves.legend(fontsize=7)
    key = ("dataset", "train_size", "batch_size", "warmup_epochs")
    cells = sorted({tuple(r[k] for k in key) for r in record["runs"]})
    width = 0.8 / len(PICKED)
    for i, name in enumerate(PICKED):
        rows = [
            next(t for t in record["table"] if tuple(t[k] for k in key) == cell and t["criterion"] == name)
            for cell in cells
        ]
        costs.bar(
            [c + i * width for c in range(len(cells))],
            [r["cost"][0] for r in rows],
            width,
            yerr=[standard_error(r["cost"]) for r in rows],
            label=name,
            capsize=2,
        )
    costs.set_xticks(
        [c + 0.4 - width / 2 for c in range(len(cells))],
        [f"{d} n={n}\nbatch {b}, warm-up {w:g}" for d, n, b, w in cells],
        fontsize=7,
    )
    if max(row["cost"][0] for row in record["table"]) > 3:  # tenths of a nat beside tens: linear below 1
        costs.set_yscale("symlog", linthresh=1.0)
    costs.set(ylabel="test NLL at the picked epoch - best (nats)", title="(b) cost of each criterion")
    costs.legend(fontsize=7)
    return save(fig, path)


def example_run(record: dict) -> dict:
    """The run whose curves panel (a) shows: where picking by reconstruction costs most, the run
    that shows what the choice can cost (not the first run, where it may cost nothing)."""

    def recon_cost(run: dict) -> float:
        return run["picks"]["recon"]["test_nll"] - run["picks"]["oracle (test)"]["test_nll"]

    return max(record["runs"], key=recon_cost)


def standard_error(spread: list) -> float:
    """The error bar of [mean, se]: none (0) for one seed, whose se is null (NaN in older exports)."""
    se = spread[1]
    return 0.0 if se is None or se != se else se


def save(fig, path: Path) -> Path:
    """Lay out, write (making the folder) and close a figure."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")  # legends placed outside the axes included
    plt.close(fig)
    return path
