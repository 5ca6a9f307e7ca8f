"""The likelihood table's figure: (a) test NLL by IWAE and -ELBO per run, beside the published
VAE figures; (b) what each estimator costs per test image (seconds, log scale)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from validation_loss_figure import save  # noqa: E402

#: Burda et al. 2016, Table 1: one stochastic layer, 784-200-200-50 tanh MLPs, 3,280 epochs
PUBLISHED = {"VAE, Burda et al. 2016": 86.76, "IWAE k=50, Burda et al. 2016": 84.78}


def draw(record: dict, path: Path) -> Path:
    table = record["table"]
    fig, (nll, cost) = plt.subplots(
        1, 2, figsize=(12, 0.45 * len(table) + 3.2), dpi=110, gridspec_kw={"width_ratios": [3, 2]}
    )
    parents = len({r.get("parent_run_id") for r in table}) > 1  # machines differ: name where each ran
    labels = [
        f"{r['variant']} (seed {r['seed']}, {r['epochs']} ep."
        + (f", parent {r['parent_run_id'][:8]})" if parents else ")")
        for r in table
    ]
    ys = range(len(table))
    # images differ far more than models: the bars are 2 se of the paired difference from the baseline
    paired_se = [r.get("nll_iwae_vs_baseline_se") for r in table]
    nll.errorbar(
        [r["nll_iwae"] for r in table],
        ys,
        xerr=[2 * (r["nll_iwae_se"] if se is None else se) for r, se in zip(table, paired_se)],
        fmt="o",
        capsize=2,
        label=f"NLL by IWAE, K = {table[0]['iwae_k']} (+- 2 se of the difference from the baseline)",
    )
    nll.plot([r["nll_elbo"] for r in table], ys, "x", label="-ELBO (same images)")
    for i, (name, value) in enumerate(PUBLISHED.items()):
        nll.axvline(value, color=f"C{i + 3}", ls=":", label=f"{name}: {value}")
    nll.set_yticks(list(ys), labels, fontsize=8)
    nll.invert_yaxis()
    images = "all 10,000" if table[0]["n"] == 10_000 else f"first {table[0]['n']:,}"
    nll.set(xlabel=f"nats per test image ({images} test images)", title="(a) test log-likelihood")
    nll.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    width = 0.27
    for i, (key, label) in enumerate(
        (("elbo_seconds", "-ELBO"), ("iwae_seconds", "IWAE"), ("ais_seconds_per_point", "AIS"))
    ):
        per_point = [r[key] / (1 if key.endswith("per_point") else r["n"]) for r in table]
        cost.barh([y + (i - 1) * width for y in ys], per_point, width, label=label)
    cost.set_xscale("log")
    cost.set_yticks(list(ys), [""] * len(table))
    cost.invert_yaxis()
    cost.set(xlabel="seconds per test image (2 CPU cores)", title="(b) estimator cost")
    cost.legend(fontsize=7)
    return save(fig, path)
