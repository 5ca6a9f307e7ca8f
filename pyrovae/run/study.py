"""Several trainings on one base config as child runs under one parent MLflow run.

The MLflow UI groups children under their parent, and because every child logs its full
flat config, the runs table and parallel-coordinates view compare them directly. ``pyrovae
sweep`` builds the variants from a grid; studies in ``experiments/`` list them by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyrovae.run import config as config_mod
from pyrovae.run.pipeline import RunResult, train_config
from pyrovae.run.tracking import MlflowRun


@dataclass
class StudyResult:
    parent_run_id: str
    children: dict[str, RunResult] = field(default_factory=dict)


def train_study(
    base: str | None, base_overrides: list[str], variants: dict[str, list[str]], parent_name: str, progress: bool = True
) -> StudyResult:
    """Train ``base`` + each variant's ``--set`` overrides as a child of one parent run.

    Every variant's config is loaded and checked before anything starts, so a typo in the
    last variant does not leave half a study behind.
    """
    configs = {name: config_mod.load(base, [*base_overrides, *overrides]) for name, overrides in variants.items()}
    parent_config = config_mod.load(base, [*base_overrides, f'mlflow.run_name="{parent_name}"'])
    settings = parent_config["mlflow"]
    parent = MlflowRun.create(
        settings["tracking_uri"], settings["experiment"], parent_name, tags={"pyrovae.group": "parent"}
    )
    with parent.lifecycle():
        parent.log_config(parent_config)
        parent.log_dict({name: list(ov) for name, ov in variants.items()}, "variants.json")
        result = StudyResult(parent.run_id)
        for name, cfg in configs.items():
            cfg["mlflow"]["run_name"] = cfg["mlflow"]["run_name"] or name
            result.children[name] = train_config(cfg, progress=progress, parent_run_id=parent.run_id)
    return result
