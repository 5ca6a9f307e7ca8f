"""Which validation loss? Train with a KL warm-up and plot, per epoch, what each candidate shows.

Trains ``validation_loss_study.toml`` (one MLflow run), reads the run's metric histories back
from MLflow and draws ``experiments/figures/validation_loss_study.png``: train/loss (the annealed
objective), val/loss (negative ELBO, beta = 1), val/recon (reconstruction only) and
val/nll_iwae (IWAE bound), with beta on a second axis. Prints the numbers as a table.

    PYROVAE_DATA_DIR=../shared/data python experiments/validation_loss_study.py [--set key=value ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402

from pyrovae.run import config  # noqa: E402
from pyrovae.run.pipeline import train_config  # noqa: E402

HERE = Path(__file__).resolve().parent
CURVES = {"train/loss": "train/loss (annealed objective)", "val/loss": "val/loss = -ELBO (recon + KL)",
          "val/recon": "val/recon (reconstruction only)", "val/nll_iwae": "val/nll_iwae (IWAE, K=50)"}


def histories(run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = mlflow.MlflowClient()
    keys = [*CURVES, "train/beta", "val/kl"]
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def plot(curves: dict, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for key, label in CURVES.items():
        steps, values = zip(*curves[key])
        ax.plot(steps, values, marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datapoint")
    beta_ax = ax.twinx()
    steps, betas = zip(*curves["train/beta"])
    beta_ax.plot(steps, betas, color="grey", linestyle=":", label="beta (mean over epoch)")
    beta_ax.set_ylabel("beta", color="grey")
    beta_ax.set_ylim(0, 1.05)
    lines = ax.get_legend_handles_labels()
    more = beta_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="upper right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    cfg = config.load(HERE / "validation_loss_study.toml", args.set)
    result = train_config(cfg, progress=False)
    curves = histories(result.run_id)
    (HERE / "figures").mkdir(exist_ok=True)
    out = HERE / "figures" / "validation_loss_study.png"
    plot(curves, out, f"MNIST ({cfg['data']['subset'] or 'all'} per split), KL warm-up over "
                      f"{cfg['train']['warmup_epochs']:g} epochs, run {result.run_id[:8]}")
    keys = ["train/beta", *CURVES, "val/kl"]
    print("epoch  " + "  ".join(f"{k:>13}" for k in keys))
    for i, (step, _) in enumerate(curves["val/loss"]):
        print(f"{step:>5}  " + "  ".join(f"{curves[k][i][1]:>13.3f}" for k in keys))
    print(f"run {result.run_id}; figure {out}")


if __name__ == "__main__":
    main()
