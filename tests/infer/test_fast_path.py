"""``train.jit = "auto"``: the traced step where a model allows it, the same numbers, one line where not."""

from __future__ import annotations

import logging
import random
import re
import subprocess
import sys
import warnings

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
from pyrovae.infer.elbo import ELBOLoss, make_elbo
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


def test_the_compiled_once_meanfield_elbo_hands_keywords_to_model_and_guide_at_every_call():
    """Pyro compiles one graph per distinct keyword values; the first call and later ones pass them on."""

    def model(x, shift=0.0):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0))
            pyro.sample("x", dist.Normal(shift, 1.0), obs=x)  # no z: the meanfield loss is exact

    def guide(x, shift=0.0):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(0.5)).expand(x.shape[0]), 1.0))

    pyro.clear_param_store()
    x = torch.randn(5)
    traced, exact = make_elbo("meanfield", jit=True), make_elbo("meanfield")
    for shift in (1.0, 5.0, 5.0):
        want = exact.differentiable_loss(model, guide, x, shift=shift)
        assert float(traced.differentiable_loss(model, guide, x, shift=shift)) == pytest.approx(float(want), rel=1e-6)


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


class Conditional(Linear):
    """Needs a label per row (a conditional model): the trial and the compiling call must pass it."""

    def model(self, x, y):
        pyro.module("linear", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z) + y.unsqueeze(-1), 1.0).to_event(1), obs=x)

    def guide(self, x, y):
        super().guide(x - y.unsqueeze(-1))


LONG = "cannot be traced: " + "this model's Python refuses the tracer " * 8  # 330 characters


class RefusesTracing(Linear):
    def p(self, z):
        if torch.jit.is_tracing():
            raise RuntimeError(LONG)
        return super().p(z)


class FrozenBatchSize(Linear):
    """A Python list as long as the batch becomes a constant of the traced graph (torch.tensor)."""

    def p(self, z):
        rows = torch.tensor([[1.0]] * z.shape[-2])
        return dist.Normal(self.dec(z) * rows, 1.0).to_event(1)


class TensorConstant(Linear):
    """``torch.tensor(1.0)`` in the graph: a constant, rightly, and no reason to step eagerly."""

    def p(self, z):
        return dist.Normal(self.dec(z), torch.tensor(1.0)).to_event(1)


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


def toy_trainer(model, splits: Splits | None = None, **keys) -> Trainer:
    """A trainer of epochs of batches of 10, on 30 random rows of 6 (validated on their first 10)
    unless ``splits`` are given, from an empty parameter store."""
    pyro.clear_param_store()
    if splits is None:
        x = torch.randn(30, 6)
        splits = Splits("toy", x, x[:10], x[:10])
    return Trainer(model, splits, epochs=1, batch_size=10, progress=False, **keys)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TakesBeta's
@pytest.mark.parametrize(
    "cls, keys, because",
    [
        (Linear, {"elbo": "iwae", "num_particles": 3}, r"train.elbo = iwae is not traced automatically \(set"),
        (Linear, {"elbo": "tracegraph"}, "train.elbo = tracegraph is not traced automatically"),
        (Linear, {"elbo": "enum"}, r"train.elbo = enum is not traced automatically \(set train.jit = true"),
        (Linear, {"free_bits": 0.5}, r"free bits are not a Pyro ELBO \(train.free_bits > 0\)$"),
        (TakesBeta, {}, "TakesBeta.model takes beta"),
        (Counting, {}, r"Counting sets traceable = False \(its Python must run at every step\)"),
        (Unregistered, {}, "4 parameters of Unregistered are not registered with pyro.module, e.g. 'enc.weight'"),
        (BranchOnData, {}, "tracing warned: Converting a tensor to a Python"),
        (PythonRandom, {}, "the traced loss .* differs from the eager .* on other rows"),
        (FrozenBatchSize, {}, r"tracing failed \(RuntimeError: The size of tensor a \(3\) must match .*\)$"),
        (RefusesTracing, {}, re.escape(f"tracing failed ({f'RuntimeError: {LONG}'[:180]})") + "$"),
    ],
)
def test_auto_steps_eagerly_and_says_why_in_one_line(cls, keys, because, caplog):
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="pyrovae"):
        trainer = toy_trainer(cls(), **keys)
    assert trainer.settings.jit is False  # what a run records: the path it took
    assert not isinstance(trainer.loss.elbo, pyro.infer.JitTrace_ELBO)
    said = [r.getMessage() for r in caplog.records if r.name == "pyrovae"]
    assert len(said) == 1 and "\n" not in said[0]
    prefix = "train.jit = auto: the eager step, because "
    assert said[0].startswith(prefix) and re.match(because, said[0][len(prefix) :]), said[0]
    if cls is PythonRandom:  # both numbers are said, and they differ
        traced, eager = re.findall(r"loss (\S+) differs from the eager (\S+) on", said[0])[0]
        assert float(traced) != float(eager)


def test_auto_traces_a_well_formed_model_of_its_own_without_a_word(caplog):
    with caplog.at_level(logging.INFO, logger="pyrovae"):
        trainer = toy_trainer(Linear())
    assert trainer.settings.jit is True and isinstance(trainer.loss, ELBOLoss)
    assert not [r for r in caplog.records if r.name == "pyrovae"]


def test_a_tracer_warning_is_said_in_its_first_160_characters(caplog):
    with caplog.at_level(logging.INFO, logger="pyrovae"):
        toy_trainer(BranchOnData())
    (said,) = [r.getMessage() for r in caplog.records if r.name == "pyrovae"]
    message = said.split("tracing warned: ", 1)[1]
    assert len(message) == 160 and "Converting a tensor to a Python float might cause the trace" in message


@pytest.mark.parametrize("rows, traced", [(1, False), (2, True), (4, True), (10, True)])
def test_the_trial_compares_on_other_rows_or_the_same_rows_fewer(rows, traced, caplog):
    """Whatever the validation split holds, the trial compares a batch of another size: a model whose
    Python draws anew at every call (tracing freezes the draw) is refused even on 2 or 4 rows."""
    x = torch.randn(30, 6)
    splits = Splits("toy", x, x[:rows], x[:10])
    with caplog.at_level(logging.INFO, logger="pyrovae"):
        trainer = toy_trainer(Linear(), splits)
    assert trainer.settings.jit is traced
    if not traced:
        said = [r.getMessage() for r in caplog.records if r.name == "pyrovae"]
        assert said == [
            "train.jit = auto: the eager step, because the validation split has fewer than 2 rows to try tracing on"
        ]
        return
    assert toy_trainer(PythonRandom(), splits).settings.jit is False
    assert toy_trainer(FrozenBatchSize(), splits).settings.jit is False


def test_auto_traces_a_conditional_model_with_its_labels_and_keeps_its_numbers():
    x, y = torch.randn(30, 6), torch.rand(30)  # labels >= 0: every row labelled
    splits = Splits("toy", x, x[:10], x[:10], train_labels=y, val_labels=y[:10], test_labels=y[:10])
    weights = {}
    for jit in ("auto", True, False):
        torch.manual_seed(0)
        trainer = toy_trainer(Conditional(), splits, jit=jit)
        assert trainer.labelled and trainer.settings.jit is (jit is not False)
        trainer.train_epoch()
        weights[jit] = [p.detach().clone() for p in trainer.vae.parameters()]
    for auto, true, eager in zip(*weights.values()):
        assert torch.equal(auto, eager) and torch.equal(true, eager)


def test_auto_traces_more_particles_and_a_tensor_constant_without_a_word(caplog):
    for model, keys in ((Linear(), {"num_particles": 3}), (TensorConstant(), {})):
        with caplog.at_level(logging.INFO, logger="pyrovae"):
            trainer = toy_trainer(model, **keys)
        assert trainer.settings.jit is True, [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.name == "pyrovae"]


def test_compiling_hides_torch_s_deprecation_of_jit_trace_and_says_nothing_when_it_succeeds(caplog):
    """pyrovae calls torch.jit.trace, not the user: its FutureWarning is not theirs to read."""
    for jit in ("auto", True):
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO, logger="pyrovae"):
            warnings.simplefilter("always")
            toy_trainer(Linear(), jit=jit)
        assert not [w for w in caught if "torch.jit.trace" in str(w.message)]
    assert not [r for r in caplog.records if r.name == "pyrovae"]


@pytest.mark.parametrize(
    "keys, refusal",
    [
        ({"free_bits": 0.5}, "train.jit compiles Pyro's ELBOs (trace, meanfield, enum), not free bits"),
        ({"iwae_gradient": "dreg"}, "train.iwae_gradient = 'dreg' is a gradient of the iwae bound"),
    ],
)
def test_an_explicit_jit_refuses_options_the_traced_elbos_lack(keys, refusal):
    pyro.clear_param_store()
    with pytest.raises(UserError, match=re.escape(refusal)):
        traced_loss(Linear(), TrainSettings(jit=True, **keys), torch.randn(8, 6))


def test_an_explicit_jit_that_cannot_trace_is_one_line_and_false_never_traces():
    pyro.clear_param_store()
    x = torch.randn(8, 6)
    said = r"^train.jit = true: tracing Unregistered failed \(RuntimeError: .*\); set train.jit = auto or false$"
    with pytest.raises(UserError, match=said):  # the trainer's check_model would have refused it before
        traced_loss(Unregistered(), TrainSettings(jit=True), x)
    assert traced_loss(Linear(), TrainSettings(jit=False), x) == (None, "")
    pyro.clear_param_store()
    with pytest.raises(UserError) as refused:
        traced_loss(RefusesTracing(), TrainSettings(jit=True), x)
    said = f"tracing RefusesTracing failed ({f'RuntimeError: {LONG}'[:180]}); set train.jit = auto or false"
    assert str(refused.value) == f"train.jit = true: {said}"


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
