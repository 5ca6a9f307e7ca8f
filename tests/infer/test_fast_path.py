"""``train.jit = "auto"``: the traced step where a model allows it, the same numbers, one line where not."""

from __future__ import annotations

import logging
import random
import re
import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from doc_examples import python_blocks
from mlflow.tracking import MlflowClient
from torch import nn

from pyrovae import UserError
from pyrovae.cli.main import main
from pyrovae.data import Splits
from pyrovae.infer.elbo import ELBOLoss
from pyrovae.infer.fast_path import traced_loss
from pyrovae.infer.settings import TrainSettings
from pyrovae.infer.trainer import Trainer
from pyrovae.run import config
from pyrovae.run.pipeline import prepare


def tiny(tiny_overrides, *extra):
    pyro.clear_param_store()
    cfg = config.load(overrides=[*tiny_overrides, *extra])
    vae, splits = prepare(cfg)  # seeds torch with train.seed: the same weights every call
    return cfg, vae, splits


def two_epochs(tiny_overrides, *extra):
    cfg, vae, splits = tiny(tiny_overrides, "train.beta_start=0.3", "train.warmup_epochs=1", *extra)
    trainer = Trainer(vae, splits, settings=cfg["train"], validation=cfg["validation"], progress=False)
    metrics = [trainer.train_epoch(), trainer.train_epoch()]
    return trainer, metrics, {k: v.detach().clone() for k, v in vae.named_parameters()}


@pytest.mark.parametrize(
    "objective, traced_elbo", [("trace", "JitTrace_ELBO"), ("meanfield", "CompiledOnceMeanField_ELBO")]
)
def test_auto_traces_the_default_vae_and_keeps_the_eager_numbers_bit_for_bit(tiny_overrides, objective, traced_elbo):
    """The traced graph runs unoptimized (the eager kernels) and is compiled under a forked random
    stream, so two annealed epochs on the traced step leave the weights of two on the eager step."""
    traced, traced_metrics, traced_weights = two_epochs(tiny_overrides, f"train.elbo={objective}")
    eager, eager_metrics, eager_weights = two_epochs(tiny_overrides, f"train.elbo={objective}", "train.jit=false")
    assert traced.settings.jit is True and type(traced.elbo).__name__ == traced_elbo
    assert eager.settings.jit is False and not type(eager.elbo).__name__.startswith(("Jit", "Compiled"))
    for name, value in eager_weights.items():
        assert torch.equal(traced_weights[name], value), name
    for ours, theirs in zip(traced_metrics, eager_metrics):  # the traced value sums in another order
        assert ours["train/loss"] == pytest.approx(theirs["train/loss"], rel=1e-7, abs=0)


def test_the_traced_meanfield_elbo_compiles_once_not_at_every_step(tiny_overrides):
    """pyro-ppl 1.9's JitTraceMeanField_ELBO caches its compiled loss under one name and looks for it
    under another, so it traced the graph again at every step (10-20x slower than eager)."""
    trainer, _, _ = two_epochs(tiny_overrides, "train.elbo=meanfield")
    compiled = trainer.elbo._differentiable_loss
    trainer.train_epoch()
    assert trainer.elbo._differentiable_loss is compiled and len(compiled.compiled) == 1


def test_an_explicit_jit_compiles_up_front_so_its_first_step_draws_what_the_eager_one_does(tiny_overrides):
    _, traced, weights = two_epochs(tiny_overrides, "train.jit=true")
    _, eager, eager_weights = two_epochs(tiny_overrides, "train.jit=false")
    assert [m["train/loss"] for m in traced] == pytest.approx([m["train/loss"] for m in eager], rel=1e-7, abs=0)
    assert all(torch.equal(weights[k], v) for k, v in eager_weights.items())


class Linear(nn.Module):
    """A small Gaussian VAE whose ``model``/``guide`` the subclasses below bend one way each."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Linear(6, 4), nn.Linear(2, 6)

    def p(self, z):
        return dist.Normal(self.dec(z), 1.0).to_event(1)

    def model(self, x):
        pyro.module("linear", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", self.p(z), obs=x)

    def guide(self, x):
        pyro.module("linear", self)
        loc, raw = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 0.1).to_event(1))


class BranchOnData(Linear):
    """Takes a Python branch on a data value: tracing would freeze the branch of its first batch."""

    def p(self, z):
        scale = 2.0 if float(z.sum()) > 0 else 1.0
        return dist.Normal(self.dec(z), scale).to_event(1)


class PythonRandom(Linear):
    """Draws from Python's random module: tracing would freeze the first draw as a constant."""

    def p(self, z):
        return dist.Normal(self.dec(z), 0.5 + random.random()).to_event(1)


class Unregistered(Linear):
    def model(self, x):  # the decoder's weights reach the graph without pyro.module
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", self.p(z), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.enc(x)[..., :2], 1.0).to_event(1))


class Counting(Linear):
    traceable = False  # e.g. a step counter in Python


class TakesBeta(Linear):
    def model(self, x, beta=1.0):
        super().model(x)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TakesBeta's
@pytest.mark.parametrize(
    "cls, keys, because",
    [
        (Linear, {"elbo": "iwae", "num_particles": 3}, "train.elbo = iwae is not traced automatically"),
        (Linear, {"elbo": "tracegraph"}, "train.elbo = tracegraph is not traced automatically"),
        (Linear, {"elbo": "enum"}, r"train.elbo = enum is not traced automatically \(set train.jit = true"),
        (Linear, {"free_bits": 0.5}, "free bits are not a Pyro ELBO"),
        (TakesBeta, {}, "TakesBeta.model takes beta"),
        (Counting, {}, r"Counting sets traceable = False \(its Python must run at every step\)"),
        (Unregistered, {}, "4 parameters of Unregistered are not registered with pyro.module, e.g. 'enc.weight'"),
        (BranchOnData, {}, "tracing warned: Converting a tensor to a Python"),
        (PythonRandom, {}, "the traced loss .* differs from the eager .* on other rows"),
    ],
)
def test_auto_steps_eagerly_and_says_why_in_one_line(cls, keys, because, caplog):
    pyro.clear_param_store()
    torch.manual_seed(0)
    x = torch.randn(30, 6)
    with caplog.at_level(logging.INFO, logger="pyrovae"):
        trainer = Trainer(cls(), Splits("toy", x, x[:10], x[:10]), epochs=1, batch_size=10, progress=False, **keys)
    assert trainer.settings.jit is False  # what a run records: the path it took
    assert not isinstance(trainer.loss.elbo, pyro.infer.JitTrace_ELBO)
    said = [r.getMessage() for r in caplog.records if r.name == "pyrovae"]
    assert len(said) == 1 and "\n" not in said[0]
    assert said[0].startswith("train.jit = auto: the eager step, because ")
    assert re.search(because, said[0]), said[0]


def test_auto_traces_a_well_formed_model_of_its_own_without_a_word(caplog):
    pyro.clear_param_store()
    x = torch.randn(30, 6)
    with caplog.at_level(logging.INFO, logger="pyrovae"):
        trainer = Trainer(Linear(), Splits("toy", x, x[:10], x[:10]), epochs=1, batch_size=10, progress=False)
    assert trainer.settings.jit is True and isinstance(trainer.loss, ELBOLoss)
    assert not [r for r in caplog.records if r.name == "pyrovae"]


def test_an_explicit_jit_that_cannot_trace_is_one_line_and_false_never_traces():
    pyro.clear_param_store()
    x = torch.randn(8, 6)
    said = r"^train.jit = true: tracing Unregistered failed \(RuntimeError: .*\); set train.jit = auto or false$"
    with pytest.raises(UserError, match=said):  # the trainer's check_model would have refused it before
        traced_loss(Unregistered(), TrainSettings(jit=True), x)
    assert traced_loss(Linear(), TrainSettings(jit=False), x) == (None, "")


def test_the_compiling_call_leaves_the_random_stream_and_the_gradients_alone():
    pyro.clear_param_store()
    model, x = Linear(), torch.randn(8, 6)
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    loss, why = traced_loss(model, TrainSettings(), x)
    assert why == "" and loss is not None
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(p.grad is None for p in model.parameters()) and model.training


def test_the_docs_example_traces_the_default_and_not_iwae(tmp_path):
    (script,) = python_blocks("docs/training.md", "## The traced step")
    (tmp_path / "traced.py").write_text(script)
    done = subprocess.run([sys.executable, "traced.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = done.stdout.strip().splitlines()
    assert first == "traced: True" and second.startswith("traced: False | test/loss: ")
    assert float(second.split(": ")[-1]) > 0


def test_pyrovae_train_prints_the_note_and_records_the_path_taken(store, tiny_overrides, capsys):
    client = MlflowClient(store)
    for extra, path in ((["train.elbo=iwae", "train.num_particles=2"], "False"), ([], "True")):
        args = ["train", "--no-progress"]
        for item in [*tiny_overrides, *extra, "mlflow.experiment=fast-path"]:
            args += ["--set", item]
        assert main(args) == 0
        said = [line for line in capsys.readouterr().out.splitlines() if "train.jit" in line]
        because = "because train.elbo = iwae is not traced automatically (set train.jit = true to try)"
        assert said == ([f"pyrovae: train.jit = auto: the eager step, {because}"] if extra else [])
        (run,) = client.search_runs([client.get_experiment_by_name("fast-path").experiment_id], max_results=1)
        assert run.data.params["train.jit"] == path  # what resume reads: the path taken, never auto
