"""Every model of the table (VAE, conditional VAE, semi-supervised M2, two-level HVAE) keeps the model
interface and is scored from its traces; each family's own promise is checked by value."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from pyrovae import UserError, load_data
from pyrovae.data import keep_labels
from pyrovae.infer.elbo import ELBOLoss, make_elbo
from pyrovae.infer.estimators.ais import AISSettings, ais, check_ais
from pyrovae.infer.estimators.diagnostics import active_units_per_site
from pyrovae.infer.estimators.iwae import iwae
from pyrovae.infer.interface import check_model
from pyrovae.infer.terms import datapoint_terms
from pyrovae.infer.trainer import Trainer
from pyrovae.model.models import MODELS, build_model, resolve_model

TINY = {
    "latent_dim": 3,
    "guide": {"name": "diagonal_normal", "hidden": [16]},
    "likelihood": {"name": "bernoulli", "hidden": [16]},
}
EXTRA = {"m2": {"classifier_hidden": [16]}, "hvae": {"top_dim": 2, "hidden": [16]}}
LATENT = {"vae": {"z"}, "cvae": {"z"}, "m2": {"y", "z"}, "hvae": {"z1", "z2"}}


@pytest.fixture(scope="module")
def data():
    return load_data("synthetic", subset=120)


def family(name, data, **options):
    pyro.set_rng_seed(0)
    return build_model({"name": name, **TINY, **EXTRA.get(name, {}), **options}, data.data_shape, data.num_classes)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_family_keeps_the_interface_and_is_scored_per_latent_site(name, data):
    model = family(name, data)
    x, y = data.evaluation_data("val")[:40], data.labels("val")[:40]
    check_model(model, x, y, enumerate_guide=True, jit=False)
    elbo = TraceEnum_ELBO() if name == "m2" else Trace_ELBO()
    with torch.no_grad():
        terms = datapoint_terms(model, elbo, x, 20, seed=0, y=y if name == "cvae" else None)
    assert {k.removeprefix("kl/") for k in terms if k.startswith("kl/")} == LATENT[name]
    assert torch.allclose(terms["loss"], terms["recon"] + terms["kl"])
    bound = iwae(model, x, 30, y=y)
    gain = bound + terms["loss"].double()  # IWAE_30 - ELBO, per point
    assert gain.mean() > -3 * gain.std() / gain.numel() ** 0.5  # tighter (or equal) on average
    assert set(active_units_per_site(model, x, y=y)) == LATENT[name] - {"y"}  # a class index has no mean
    # the config that rebuilds it, and a training step that moves every parameter
    again = build_model(resolve_model(model.config), data.data_shape, data.num_classes)
    assert type(again) is type(model) and again.state_dict().keys() == model.state_dict().keys()
    loss = ELBOLoss(model, make_elbo("enum" if name == "m2" else "trace"))
    labels = data.labels("train")[:40] if name in ("cvae", "m2") else None
    loss(data.evaluation_data("train")[:40], torch.tensor(0.5), labels).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == [] or (name == "cvae" and all("prior" in n or "class_" in n for n in dead))


def test_the_conditional_vae_scores_log_p_x_given_y_with_its_labels(data):
    model = family("cvae", data, conditional_prior=True)
    x, y = data.evaluation_data("val")[:30], data.labels("val")[:30]
    with torch.no_grad():
        right = datapoint_terms(model, Trace_ELBO(), x, 30, seed=1, y=y)["loss"]
        wrong = datapoint_terms(model, Trace_ELBO(), x, 30, seed=1, y=(y + 1) % 4)["loss"]
    assert not torch.allclose(right, wrong)  # the label reaches model and guide: the number is about p(x|y)
    with pytest.raises(UserError, match=r"^model ConditionalVAE needs labels"):
        check_model(model, x)
    with pytest.raises(UserError, match=r"^model 'cvae' needs labels, but the data have none"):
        build_model({"name": "cvae", **TINY}, (1, 12, 12), None)
    settings = AISSettings(steps=10, chains=2, leapfrog_steps=2)
    assert torch.isfinite(ais(model, x[:4], settings, y=y[:4])).all()  # AIS over z, given y


def test_m2_sums_its_label_out_and_ais_refuses_it_in_one_line(data):
    model = family("m2", data)
    x, y = data.evaluation_data("val")[:20], data.labels("val")[:20]
    with torch.no_grad():
        unlabelled = datapoint_terms(model, TraceEnum_ELBO(), x, 20, seed=0)
        labelled = datapoint_terms(model, TraceEnum_ELBO(), x, 20, seed=0, y=y)
    assert "kl/y" in unlabelled and "kl/y" not in labelled  # y observed: log p(y) is in recon
    assert torch.allclose(iwae(model, x, 5, y=y), iwae(model, x, 5))  # optional labels: scored as log p(x)
    with pytest.raises(UserError, match=r"^AIS needs continuous latent sites, but site 'y'"):
        check_ais(model, x)
    # a class index has no posterior mean (torch gives NaN): y is left out of active units, not 0 active
    assert set(active_units_per_site(model, x)) == {"z"}


def test_m2_trains_semi_supervised_with_balanced_labels_and_logs_accuracy():
    data = load_data("synthetic", labelled=8)
    kept = data.labels("train")
    assert int((kept >= 0).sum()) == 8 and torch.bincount(kept[kept >= 0], minlength=4).tolist() == [2, 2, 2, 2]
    assert torch.equal(kept, load_data("synthetic", labelled=8).labels("train"))  # seeded: the same labels
    pyro.set_rng_seed(0)
    model = build_model({"name": "m2", **TINY, "classifier_hidden": [16]}, data.data_shape, data.num_classes)
    seen = []

    class Watch(Trainer):
        def _step(self, x, y, beta, index):
            seen.append(None if y is None else y.tolist())
            return super()._step(x, y, beta, index)

    trainer = Watch(model, data, epochs=1, batch_size=500, elbo="enum", progress=False)
    assert trainer.semi_supervised and trainer.steps_per_epoch == 6 + 1
    metrics = trainer.fit()
    assert [y is not None for y in seen].count(True) == 1 and all(v >= 0 for v in next(s for s in seen if s))
    assert 0 <= metrics["test/accuracy"] <= 1 and "val/accuracy" in trainer.history[0]


@pytest.mark.parametrize(
    "n, message",
    [
        (3, r"^data.labelled = 3 keeps fewer labels than the 4 classes"),
        (10_000, r"^data.labelled = 10000 asks for 2500 labels of class 0"),
    ],
)
def test_labels_that_cannot_be_kept_balanced_are_one_line(n, message):
    with pytest.raises(UserError, match=message):
        keep_labels(torch.arange(40) % 4, n, 4, 0)


def test_a_conditional_model_refuses_unlabelled_rows_in_one_line():
    data = load_data("synthetic", subset=120, labelled=8)
    with pytest.raises(UserError, match=r"^model ConditionalVAE needs a label for every row"):
        Trainer(build_model({"name": "cvae", **TINY}, data.data_shape, 4), data, epochs=1, progress=False)


def test_the_hierarchical_vae_has_both_levels_in_every_estimate(data):
    model = family("hvae", data)
    x = data.evaluation_data("val")[:10]
    settings = AISSettings(steps=10, chains=2, leapfrog_steps=2)
    from pyrovae.infer.estimators.potential import Potential

    potential = Potential(model, x, None, 2, 1)
    assert potential.sites == ["z2", "z1"] and sum(potential.sizes) == 2 + 3  # AIS moves both levels
    assert torch.isfinite(ais(model, x, settings)).all()
