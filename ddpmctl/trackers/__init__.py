"""Experiment trackers: where a training run's records and pictures go besides its own files.

A tracker receives what metrics.jsonl receives (each record as it is appended: losses, learning
rate, evaluations, skipped steps), the sample grids the run writes under RUN/grids/ (image runs)
and, when the session ends, its plots (loss.png, convergence.png, samples-over-training.png). It is a
plugin of the entry-point group ``ddpmctl.trackers``, resolved by name like any other (the
``tracker`` setting, `ddpmctl train --tracker NAME`, DDPMCTL_TRACKER):

    factory(run=Path, start_step=int, **options) -> Tracker

``run`` is the run directory (a tracker that writes files writes them under it), ``start_step``
the step the session starts from (a resumed run's records after it are written again). A
tracker's ``requires`` maps the modules it imports to the command that installs them, so that
a missing optional package is refused before training starts. The built-in ``tensorboard``
writes event files under RUN/tensorboard/ (the extra: pip install "ddpmctl[tensorboard]");
a W&B or MLflow tracker plugs in the same way.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pydantic import Field

from ddpmctl import registry
from ddpmctl.errors import ConfigError
from ddpmctl.registry import PluginOptions, with_options
from ddpmctl.trackers.base import Tracker


def check(name: str, options: dict | None) -> None:
    """The tracker's options, and the packages it needs, before anything is trained."""
    registry.validate_options("tracker", name, options)
    for module, install in getattr(registry.load("tracker", name), "requires", {}).items():
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"the {name} tracker needs the {module} package, which is not installed; "
                              f"install it with `{install}`, or turn the tracker off with --tracker none.")


def open_tracker(name: str, options: dict | None, run: Path, start_step: int) -> Tracker:
    """The tracker ``name`` of the run directory ``run``, from step ``start_step`` on."""
    check(name, options)
    return registry.build("tracker", name, options, run=Path(run), start_step=start_step)


class TensorBoardOptions(PluginOptions):
    flush_secs: int = Field(10, ge=1, le=3600, description="seconds between writes of the event file to disk")


@with_options(TensorBoardOptions)
def tensorboard(run: Path, start_step: int, flush_secs: int = 10) -> Tracker:
    """TensorBoard event files in RUN/tensorboard/: losses, learning rate and evaluations as scalars, records with an event as text, sample grids and the run's plots as images."""
    from ddpmctl.trackers import tensorboard_events  # the optional tensorboard package, imported once asked for

    return tensorboard_events.TensorBoard(run / "tensorboard", start_step, flush_secs)


tensorboard.requires = {"tensorboard": 'pip install "ddpmctl[tensorboard]"'}
