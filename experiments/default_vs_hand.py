r"""Does the default ``pyrovae train`` lose to a plain PyTorch VAE? Same architecture, data, epochs.

Per seed, two child runs under one MLflow parent run:

- ``pyrovae-seed<S>``: ``pyrovae train`` with its defaults (784-400-50 MLP, diagonal Gaussian
  q, standard normal prior, Bernoulli likelihood, ``Trace_ELBO``: a Monte Carlo KL, Adam 1e-3,
  batch 128), ``train.epochs`` and ``train.seed = S``;
- ``hand-seed<S>``: ``benchmarks/baselines.HandVAE`` (the same networks and initialization
  scheme in plain PyTorch, closed-form KL, ``binary_cross_entropy_with_logits``, Adam 1e-3,
  batch 128) trained on the same dynamically binarized batches (the same global RNG stream).

- ``pyrovae-meanfield-seed<S>`` (arm ``meanfield``, the ablation): the default with
  ``train.elbo = "meanfield"`` (``TraceMeanField_ELBO``: the KL in closed form, as the
  hand-written VAE computes it), so a gap between the two above can be put on the KL estimator.

Both are scored the same way: the hand-written VAE's weights are copied into a pyrovae
:class:`~pyrovae.VAE` (the layers match one to one), then ``test/loss`` (-ELBO, fixed seed) and
``test/nll_iwae`` (IWAE with ``--iwae-k`` samples) on the fixed seeded binarization of the
10,000 test images.

    PYROVAE_DATA_DIR=../shared/data python experiments/default_vs_hand.py --epochs 100 --seeds 0 1 2
    # more seeds or arms under an existing parent run:
    PYROVAE_DATA_DIR=../shared/data python experiments/default_vs_hand.py --seeds 0 --arms meanfield --parent RUN
    python experiments/default_vs_hand.py --epochs 1 --seeds 0 --subset 1000 --iwae-k 10   # smoke test
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pyro
from pyro.infer import Trace_ELBO

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "benchmarks"))

from baselines import HandVAE  # noqa: E402

from pyrovae import VAE, evaluate_run, iwae, load_data, train_config, validate  # noqa: E402
from pyrovae.cli.signals import run_script  # noqa: E402
from pyrovae.run import config  # noqa: E402
from pyrovae.run.tracking import MlflowRun  # noqa: E402

#: HandVAE parameter -> the pyrovae VAE's parameter of the same layer
LAYERS = {
    "encoder.body.0": "posterior.encoder.net.0",
    "encoder.head": "posterior.head",
    "decoder.0": "likelihood.decoder.net.0",
    "decoder.2": "likelihood.decoder.net.2",
}


def as_pyrovae(hand: HandVAE, model_config: dict, data_shape) -> VAE:
    vae = VAE(
        model_config["prior"],
        model_config["guide"],
        model_config["likelihood"],
        latent_dim=model_config["latent_dim"],
        data_shape=data_shape,
    )
    state = {f"{LAYERS[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in hand.state_dict().items()}
    missing, unexpected = vae.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("prior.") for k in missing), (missing, unexpected)  # N(0, I) buffers
    return vae.eval()


def train_hand(cfg: dict, parent: str, iwae_k: int) -> None:
    seed, epochs = cfg["train"]["seed"], cfg["train"]["epochs"]
    pyro.set_rng_seed(seed)  # as `pyrovae train` seeds before building
    data = load_data(cfg["data"])
    hand = HandVAE(lr=cfg["train"]["lr"])
    run = MlflowRun.create(
        cfg["mlflow"]["tracking_uri"], cfg["mlflow"]["experiment"], f"hand-seed{seed}", parent_run_id=parent
    )
    with run.lifecycle():
        run.log_params(
            {
                "model": "HandVAE (closed-form KL, BCE)",
                "train.seed": seed,
                "train.epochs": epochs,
                "train.lr": cfg["train"]["lr"],
                "train.batch_size": cfg["train"]["batch_size"],
                "data.subset": cfg["data"]["subset"],
            }
        )
        started = time.perf_counter()
        for epoch in range(1, epochs + 1):
            total = hand.train_batches(data.train_batches(cfg["train"]["batch_size"]))
            vae = as_pyrovae(hand, cfg["model"], data.data_shape)
            val = validate(vae, Trace_ELBO(), data.evaluation_data("val"), 1000, seed=0)
            run.log_metrics(
                {"train/loss": total / data.train.shape[0], **{f"val/{k}": v for k, v in val.items()}}, step=epoch
            )
        run.log_metrics({"train/seconds_total": time.perf_counter() - started}, step=epochs)
        test = data.evaluation_data("test")
        scores = validate(vae, Trace_ELBO(), test, 1000, seed=0)
        started = time.perf_counter()
        log_px = iwae(vae, test, iwae_k, batch_size=100, seed=0)
        run.log_metrics(
            {
                **{f"test/{k}": v for k, v in scores.items()},
                "test/nll_iwae": -float(log_px.mean()),
                "test/iwae_seconds": time.perf_counter() - started,
            },
            step=epochs,
        )
        run.set_tags({"eval.iwae_k": str(iwae_k), "eval.iwae_n": str(test.shape[0])})
    print(f"hand seed {seed}: test/nll_iwae {-float(log_px.mean()):.3f}", flush=True)


#: arm -> the ``--set`` overrides of ``pyrovae train`` (``hand`` is the hand-written VAE)
ARMS = {"pyrovae": [], "meanfield": ['train.elbo="meanfield"'], "hand": None}


def run_arm(arm: str, base: list[str], seed: int, parent: str, iwae_k: int) -> None:
    name = "pyrovae" if arm in ("pyrovae", "hand") else f"pyrovae-{arm}"
    cfg = config.load(None, [*base, *(ARMS[arm] or []), f"train.seed={seed}", f'mlflow.run_name="{name}-seed{seed}"'])
    if ARMS[arm] is None:
        return train_hand(cfg, parent, iwae_k)
    result = train_config(cfg, progress=False, parent_run_id=parent)
    metrics = evaluate_run(result.run_id, iwae_k=iwae_k, progress=False).metrics
    print(f"{name} seed {seed}: test/nll_iwae {metrics['test/nll_iwae']:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iwae-k", type=int, default=1000)
    parser.add_argument("--subset", type=int, default=0, help="examples per split (0 = all)")
    parser.add_argument("--experiment", default="default-vs-hand")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=["pyrovae", "hand"])
    parser.add_argument("--parent", default="", help="add the runs to this parent run (default: a new one)")
    args = parser.parse_args()
    base = [f"train.epochs={args.epochs}", f"data.subset={args.subset}", f'mlflow.experiment="{args.experiment}"']
    parent_cfg = config.load(None, base)
    if args.parent:
        parent = MlflowRun.existing(args.parent, parent_cfg["mlflow"]["tracking_uri"])
    else:
        parent = MlflowRun.create(
            parent_cfg["mlflow"]["tracking_uri"], args.experiment, "default-vs-hand", tags={"pyrovae.group": "parent"}
        )
    with parent.lifecycle():
        if not args.parent:
            parent.log_config(parent_cfg)
        for seed in args.seeds:  # the arms alternate, so a cut-short study stays paired
            for arm in args.arms:
                run_arm(arm, base, seed, parent.run_id, args.iwae_k)
    print(f"parent run {parent.run_id}")


if __name__ == "__main__":
    run_script(main)  # a `kill` ends the study's runs KILLED, not RUNNING
