"""`ddpmctl distill RUN --method NAME`: a one- or two-step model from a trained run (methods.py),
written as a new run directory that records its teacher; trained, resumed and stopped as `train`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ddpmctl.cli.common import console, parse_options
from ddpmctl.cli.render import Rich
from ddpmctl.cli.train import run_session
from ddpmctl.errors import OptionsError


def distill(
    run: Annotated[Optional[Path], typer.Argument(help="The teacher: a run directory made by `ddpmctl train` (omit with --resume).")] = None,
    method: Annotated[Optional[str], typer.Option(help="Few-step method: consistency (easy consistency tuning, or distillation with -o method.target=teacher) or meanflow (flow runs); see `ddpmctl plugins list --kind method`.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Name of the new run, made beside the teacher (default: <teacher>-<method>).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training iterations (default: 0.4 x the teacher's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Examples per iteration (default: the teacher's).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: 0.2 x the teacher's).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of batches and noise (default: the teacher's).")] = None,
    runs_dir: Annotated[Optional[Path], typer.Option(help="Where the new run is made (default: beside the teacher).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="Iterations between checkpoints.")] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Measure quality every N steps (one-step samples unless -o eval... says otherwise; 0: never).")] = None,
    eval_n: Annotated[Optional[int], typer.Option(help="Samples per evaluation.")] = None,
    until_metric: Annotated[Optional[str], typer.Option(help="Stop when an evaluation reaches NAME<=X or NAME>=X (none: off).")] = None,
    max_time: Annotated[Optional[str], typer.Option(help="Stop when the run's wall time reaches this: seconds, or 90s, 15m, 1h (0: no limit).")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Option KIND.KEY=VALUE, KIND method or eval (repeatable), e.g. method.target=teacher.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML file of settings (above the teacher's, below env and flags).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue this distilled run from its last good checkpoint.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads of each process.")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="Run the network through torch.compile.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto, fp32 or bf16 (as `ddpmctl train`).")] = None,
):
    """Distill a trained run into a one- or two-step model; writes a new run (sample it with `ddpmctl sample NEW --steps 1`)."""
    from ddpmctl import distributed
    from ddpmctl.session import Session, distill_settings

    opts = parse_options(option, kinds=("method", "eval"))
    flags = dict(
        steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device, checkpoint_every=checkpoint_every,
        eval_every=eval_every, eval_n=eval_n, until_metric=until_metric, max_time=max_time, eval_options=opts["eval"] or None,
        threads=threads, compile=compile, precision=precision, method_options=opts["method"] or None,
    )
    flags = {k: v for k, v in flags.items() if v is not None}
    if resume is not None:
        if run is not None or method is not None or name is not None:
            raise OptionsError("--resume continues a distilled run with its own teacher, method and name; drop RUN, --method and --name.")
        base = None
    else:
        if run is None or method is None:
            raise OptionsError("distill needs the teacher run and a method, e.g. `ddpmctl distill runs/digit0 --method consistency`.")
        made, base = distill_settings(run, method, name, runs_dir)
        flags.update(made)
    if not distributed.world_from_env().main:
        console.quiet = True
    events = Rich(console, transient=False)
    session = Session.prepare(flags, config, resume, events, base=base)
    run_session(session, events)
