"""Config: defaults, TOML files, --set overrides, and one clear line for each mistake."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrovae.errors import UserError
from pyrovae.run import config


def test_defaults_resolve_with_component_defaults_filled_in():
    cfg = config.load()
    assert cfg["model"]["guide"] == {"name": "diagonal_normal", "hidden": [400], "activation": "relu", "net": "mlp",
                                     "conv_channels": [32, 64]}  # fmt: skip
    flat = config.flatten(cfg)
    assert flat["train.lr"] == 0.001 and isinstance(flat["train.warmup_epochs"], float)


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nepochs = 3\nlr = 1\n[model.guide]\nhidden = [32, 16]\n")
    cfg = config.load(path, ["train.epochs=5", "model.guide.activation=tanh"])
    assert cfg["train"]["epochs"] == 5 and cfg["train"]["lr"] == 1.0
    assert cfg["model"]["guide"]["hidden"] == [32, 16] and cfg["model"]["guide"]["activation"] == "tanh"


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = config.load(None, ["model.guide.hidden=[7]"])
    path = tmp_path / "again.toml"
    path.write_text(config.to_toml(cfg))
    assert config.load(path) == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.epocs=3"], "unknown config key 'train.epocs' (did you mean 'epochs'?)"),
        (["trian.epochs=3"], "unknown config section [trian] (did you mean 'train'?)"),
        (["train.epochs=0"], "config key 'train.epochs' must be at least 1, got 0"),
        (["train.epochs=2.5"], "config key 'train.epochs' must be an integer, got 2.5"),
        (["train.lr=0"], "config key 'train.lr' must be greater than 0.0, got 0"),
        (["train.beta_start=0"], "config key 'train.beta_start' must be greater than 0.0, got 0"),
        (["train.elbo=vimco"], "config key 'train.elbo' must be one of trace, meanfield, enum, iwae, renyi"),
        (["data.binarize=maybe"], "config key 'data.binarize' must be true or false, got 'maybe'"),
        (["model.prior.name=gauss"], "unknown prior 'gauss'"),
        (["model.guide.hiden=[3]"], "has no argument 'hiden' (did you mean 'hidden'?)"),
        (["model.guide.hidden=big"], "argument 'hidden' must be a list, got 'big'"),
        (["model.guide.latent_dim=3"], "'latent_dim' is set by pyrovae"),
        (["model.prior.name=nowhere.module:Prior"], "cannot import module 'nowhere.module'"),
        (["model.prior=standard_normal"], "'model.prior' is a section, not a value"),
        (["train.epochs"], "--set needs section.key=value"),
    ],
)
def test_bad_values_get_one_clear_line(overrides, message):
    with pytest.raises(UserError) as err:
        config.load(None, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_malformed_toml_names_the_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nepochs = 3\nlr = = 2\n")
    with pytest.raises(UserError, match=r"not valid TOML: .*line 3"):
        config.load(path)


@settings(max_examples=60, deadline=None)
@given(epochs=st.integers(-5, 5), lr=st.floats(-1, 1, allow_nan=False), beta=st.floats(-1, 2, allow_nan=False))
def test_ranges_are_enforced_for_any_value(epochs, lr, beta):
    overrides = [f"train.epochs={epochs}", f"train.lr={lr!r}", f"train.beta_start={beta!r}"]
    valid = epochs >= 1 and lr > 0 and 0 < beta  # a beta-VAE may start above 1
    if valid:
        cfg = config.load(None, overrides)
        assert cfg["train"]["epochs"] == epochs and cfg["train"]["lr"] == lr
    else:
        with pytest.raises(UserError, match="config key 'train."):
            config.load(None, overrides)


def test_every_config_key_is_in_the_generated_reference_with_a_description():
    import sys
    import typing
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[2] / "docs" / "_ext"))
    from reference_pages import config_page

    page = config_page()
    for section, cls in config.SECTIONS.items():
        for name in typing.get_type_hints(cls):
            if name == "section":
                continue
            (row,) = [line for line in page.splitlines() if line.startswith(f"| `{section}.{name}` |")]
            assert row.rstrip(" |").split("|")[-1].strip(), f"{section}.{name} has no description"
    for key in ("model.latent_dim", "model.top_dim", "model.classifier_weight", "model.conditional_prior"):
        assert f"| `{key}` |" in page  # every model of the table, its own keys


@pytest.mark.parametrize("page", ["config", "cli"])
def test_the_committed_reference_pages_are_the_generated_ones(page):
    """The docs build rewrites them from the code; a committed copy that differs is a stale page."""
    import sys
    from pathlib import Path

    docs = Path(__file__).parents[2] / "docs"
    sys.path.insert(0, str(docs / "_ext"))
    import reference_pages

    generated = getattr(reference_pages, f"{page}_page")()
    assert (docs / "reference" / f"{page}.md").read_text() == generated, (
        "stale reference page: build the docs (sphinx-build docs docs/_build/html) and commit docs/reference/"
    )


def test_one_pyrovae_train_checks_each_model_table_once(store, tiny_overrides, monkeypatch):
    """Settings are checked where they enter: the [model] table and each component table once, when
    the config loads; building, logging and the logged model's clean copy take the checked tables."""
    import pyrovae.model.components as components
    import pyrovae.model.models as models
    from pyrovae.cli.main import main

    checked, original = [], components.check_arguments

    def counting(kind, spec, table, context):
        if not isinstance(spec, components.Checked):
            checked.append(kind)
        return original(kind, spec, table, context)

    monkeypatch.setattr(components, "check_arguments", counting)
    monkeypatch.setattr(models, "check_arguments", counting)
    assert main(["train", *[a for s in tiny_overrides for a in ("--set", s)]]) == 0
    # the model's own keys once more: reading a built model's config back (a model built in Python has no other check)
    assert sorted(checked) == ["guide", "likelihood", "model", "model", "prior"]


def test_a_checked_model_table_is_checked_again_once_edited_and_survives_pickle_and_deepcopy():
    import copy
    import pickle

    from pyrovae.model.components import Checked, is_checked
    from pyrovae.model.models import resolve_model

    table = resolve_model({"latent_dim": 4})
    assert isinstance(table, Checked) and is_checked(table["guide"]) and resolve_model(table) is table
    for again in (pickle.loads(pickle.dumps(table)), copy.deepcopy(table)):
        assert again == table and is_checked(again) and is_checked(again["guide"])
    table["guide"]["hidden"].append("wide")  # an edit deep inside: the table is no longer what was checked
    assert not is_checked(table) and not is_checked(table["guide"])
    with pytest.raises(UserError, match="hidden"):
        resolve_model(table)
    table["guide"]["hidden"].pop()
    table["latent_dim"] = 5
    again = resolve_model(table)
    assert again is not table and again["latent_dim"] == 5 and is_checked(again)


def test_the_old_eval_table_is_read_as_validation_with_one_line_and_a_logged_run_silently(tmp_path, caplog):
    path = tmp_path / "old.toml"
    path.write_text("[eval]\nbatch_size = 7\niwae_every = 2\n")
    with caplog.at_level("WARNING", logger="pyrovae"):
        cfg = config.load(path, ["eval.iwae_k=9", "validation.iwae_every=3"])  # the new name wins where both are set
    assert "eval" not in cfg
    assert (cfg["validation"]["batch_size"], cfg["validation"]["iwae_every"], cfg["validation"]["iwae_k"]) == (7, 3, 9)
    assert [r.getMessage() for r in caplog.records] == [
        "config: [eval] is now [validation] (--set eval.KEY is validation.KEY); the old name will go"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="pyrovae"):
        logged = config.over_defaults({"eval": {"batch_size": 7}})  # a 0.2 run's config.toml
    assert logged["validation"]["batch_size"] == 7 and not caplog.records


def test_the_old_python_names_still_work_with_a_deprecation_warning():
    import pyrovae
    from pyrovae import ValidationSettings, validate
    from pyrovae.data import load_data
    from pyrovae.infer.trainer import Trainer

    with pytest.warns(DeprecationWarning, match=r"pyrovae.evaluate is now pyrovae.validate"):
        assert pyrovae.evaluate is validate
    with pytest.warns(DeprecationWarning, match=r"pyrovae.EvalSettings is now pyrovae.ValidationSettings"):
        assert pyrovae.EvalSettings is ValidationSettings
    data = load_data("synthetic", subset=64)
    vae = pyrovae.VAE(latent_dim=2, data_shape=data.data_shape)
    with pytest.warns(DeprecationWarning, match=r"evaluation= is now called validation="):
        trainer = Trainer(vae, data, evaluation={"batch_size": 5}, progress=False)
    assert trainer.validation.batch_size == 5
    with pytest.raises(UserError, match=r"^give validation= only: evaluation= is its old name$"):
        Trainer(vae, data, evaluation={"batch_size": 5}, validation={"batch_size": 6}, progress=False)
