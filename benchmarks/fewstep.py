"""Issue 16: one- and two-step models, measured on this machine.

    python benchmarks/fewstep.py digit0 --teacher-steps 5000 --variants ect,cd,meanflow
    python benchmarks/fewstep.py conditional --teacher-steps 5000 --variants ect
    python benchmarks/fewstep.py toy2d --datasets 8gaussians,spiral,moons --variants ect,meanflow
    python benchmarks/fewstep.py scan --run RUN --specs '[{"steps": 2, "options": {"sigmas": [2.5]}}]'

digit0: trains (or reuses, --teacher RUN) the phase-2 teacher, `ddpmctl train --data mnist16
--digits 0` (EDM), and scores its best sampler (classifier FID at n = 980 against the 980
held-out zeros; several samplers up to 99 NFE). Then each variant, timed:

    ect        `ddpmctl distill TEACHER --method consistency` (easy consistency tuning)
    cd         the same with -o method.target=teacher (consistency distillation, Heun steps of the teacher)
    ct         `ddpmctl train --method consistency --process edm` from scratch (consistency training, ECT's curriculum)
    meanflow   `ddpmctl train --method meanflow` from scratch (flow process, no teacher)

and scores its 1-, 2- and 4-step samples: classifier FID, the share the MNIST classifier reads
as zero, and (1 and 2 steps) the Inception FID, each beside its floor; sampling images per second
at 1, 2 and 20 NFE. Each trained run draws RUN/few-step.png: its 1-, 2- and 4-step samples from
the same noise (on 2-D data, its one-step map beside the teacher's ODE trajectories).

conditional: the ten-digit teacher (`--cond class`), distilled, sampled at the guidance the docs
recommend (--guidance, 2): per-class accuracy at 1 and 2 steps (bar: >= 97% for every class).

toy2d: the default 2-D teacher of each dataset (--process edm), distilled; W2 of one-step samples at n = 2000,
mean over --draws draws against the mean floor (benchmarks/toy2d_w2.py's estimate).

scan: one run's classifier FID and share of zeros (n = 980; a conditional run: each class in turn
at --guidance, and its lowest per-class accuracy) for each SPEC, the keyword arguments of
Run.sample (steps, sampler, options): where a few-step model starts, its middle levels.

Results: benchmarks/out/fewstep/<task>/results-<variants>.json (scan: <run>.json); Markdown tables are printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import ddpmctl
from ddpmctl import registry
from ddpmctl.devices import set_threads
from ddpmctl.metrics.base import score
from ddpmctl.metrics.classifier import classify

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_phases import ensure_mnist  # noqa: E402
from toy2d_w2 import score as w2_score  # noqa: E402

VARIANTS = {  # how it is trained, the method, its options, the process from scratch
    "ect": ("distill", "consistency", {}, None),
    "cd": ("distill", "consistency", {"target": "teacher"}, None),
    "ct": ("scratch", "consistency", {}, "edm"),
    "meanflow": ("scratch", "meanflow", {}, None),
}
TEACHER_SAMPLERS = [("heun", 18), ("heun", 25), ("heun", 50), ("dpm-solver++", 20)]  # 35, 49, 99 and 20 NFE


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def make_variant(variant: str, teacher: Path, data: dict, args) -> tuple[ddpmctl.Run, float]:
    """Train one variant; returns the run and its training wall time (seconds)."""
    how, method, options, process = VARIANTS[variant]
    name = f"{teacher.name}-{variant}{args.suffix}"
    common = dict(steps=args.steps, name=name, runs_dir=teacher.parent, method_options=options, checkpoint_every=10**6)
    if args.batch_size:
        common["batch_size"] = args.batch_size
    if args.lr:
        common["lr"] = args.lr
    if how == "distill":
        return timed(lambda: ddpmctl.distill(teacher, method, **common))
    extra = {"process": process} if process else {}
    return timed(lambda: ddpmctl.train(method=method, **data, **extra, **{**common, "steps": args.scratch_steps or args.steps}))


def image_scores(run: ddpmctl.Run, steps: int | None, sampler: str | None, n: int, labels=None, guidance=1.0, fid: bool = False,
                 options: dict | None = None) -> dict:
    """Classifier FID (and Inception FID) with floors, and what the digit classifier reads."""
    s = run.sample(n=n, sampler=sampler, steps=steps, seed=0, labels=labels, guidance=guidance, batch_size=1000, options=options)
    out = {"nfe": s.record["nfe"]}
    metrics = ["classifier-fid"] + (["fid"] if fid else [])
    for m in metrics:
        fn, opts = registry.resolve("metric", m, None)
        r = score(fn, s.x, run.dataset(), opts.model_dump())
        key = "classifier-fid" if m == "classifier-fid" else "fid"
        out[m], out[f"{m} floor"] = r.values[key], r.floor[key]
    pred = classify(s.x)[0].argmax(1)
    if labels is None:
        out["zeros"] = float((pred == 0).mean())
    else:
        want = labels.numpy()
        out["per_class"] = {int(c): float((pred[want == c] == c).mean()) for c in np.unique(want)}
    return out


def images_per_second(run: ddpmctl.Run, sampler: str | None, steps: int, n: int = 512) -> float:
    run.sample(n=64, sampler=sampler, steps=steps)  # warm-up
    _, seconds = timed(lambda: run.sample(n=n, sampler=sampler, steps=steps, batch_size=n))
    return n / seconds


def teacher_run(args, data: dict, out: Path) -> tuple[Path, float | None]:
    if args.teacher is not None:
        return args.teacher, None
    run, seconds = timed(lambda: ddpmctl.train(**data, steps=args.teacher_steps, name="teacher", runs_dir=out, checkpoint_every=10**6))
    return run.path, seconds


def digits(args, conditional: bool) -> dict:
    ensure_mnist()
    out = args.out / ("conditional" if conditional else "digit0")
    data = dict(data="mnist16", cond="class") if conditional else dict(data="mnist16", digits="0")
    path, teacher_s = teacher_run(args, data, out)
    teacher = ddpmctl.Run.load(path)
    labels = torch.arange(args.n) % 10 if conditional else None
    g = args.guidance if conditional else 1.0
    result = {"teacher": str(path), "teacher_train_s": teacher_s, "teacher_step": teacher.step, "rows": {}}
    for sampler, steps in TEACHER_SAMPLERS if not args.skip_teacher_rows else []:
        row = image_scores(teacher, steps, sampler, args.n, labels, g, fid=(sampler, steps) == ("heun", 18) and not conditional)
        row["images_per_s"] = images_per_second(teacher, sampler, steps) if (sampler, steps) == ("dpm-solver++", 20) else None
        result["rows"][f"teacher {sampler}:{steps}"] = row
        print(f"teacher {sampler}:{steps}: {row}", flush=True)
    for variant in args.variants.split(","):
        run, seconds = make_variant(variant, path, data, args)
        for k in (1, 2, 4):
            row = image_scores(run, k, None, args.n, labels, g, fid=k <= 2 and not conditional)
            row["train_s"] = round(seconds, 1)
            row["images_per_s"] = images_per_second(run, None, k) if k <= 2 else None
            result["rows"][f"{variant} {k}-step"] = row
            print(f"{variant} {k}-step: {row}", flush=True)
    return result


def toy2d(args) -> dict:
    out = args.out / "toy2d"
    result = {}
    variants = args.variants.split(",")
    for name in args.datasets.split(","):
        result[name] = {}
        teacher = out / name
        if args.teacher is not None:  # a folder of teachers named as the datasets
            teacher = args.teacher / name
        elif any(VARIANTS[v][0] == "distill" for v in variants):
            run, teacher_s = timed(lambda: ddpmctl.train(data=name, process=args.process, name=name, runs_dir=out, checkpoint_every=10**6))
            result[name] = {"teacher_train_s": round(teacher_s, 1), "teacher": w2_score(run.path, 2000, args.draws, None)}
        for variant in variants:
            run, seconds = make_variant(variant, teacher, {"data": name}, args)
            for k in (1, 2):
                r = w2_score(run.path, 2000, args.draws, None, k)
                result[name][f"{variant} {k}-step"] = {**r, "train_s": round(seconds, 1)}
                print(f"{name} {variant} {k}-step: W2 {r['w2']:.4f} / floor {r['w2_floor']:.4f} = {r['ratio']:.2f}", flush=True)
    return result


def scan(args) -> dict:
    run = ddpmctl.Run.load(args.run)
    conditional = run.model.num_classes > 0  # then each class in turn, at --guidance
    labels = torch.arange(args.n) % 10 if conditional else None
    out = {}
    for spec in json.loads(args.specs):
        row = image_scores(run, spec.get("steps"), spec.get("sampler"), args.n, labels, args.guidance if conditional else 1.0,
                           fid=args.fid, options=spec.get("options"))
        out[json.dumps(spec)] = row
        read = f"lowest class {min(row['per_class'].values()):.4f}" if conditional else f"zeros {row['zeros']:.4f}"
        fid = f", FID {row['fid']:.2f} (floor {row['fid floor']:.2f})" if args.fid else ""
        print(f"{json.dumps(spec)}: classifier FID {row['classifier-fid']:.4f}, {read}{fid}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("task", choices=["digit0", "conditional", "toy2d", "scan"])
    p.add_argument("--run", type=Path, default=None, help="scan: the run to sample")
    p.add_argument("--fid", action="store_true", help="scan: the Inception FID too")
    p.add_argument("--specs", default='[{"steps": 1}]', help="scan: a JSON list of Run.sample keyword arguments")
    p.add_argument("--teacher", type=Path, default=None, help="an existing teacher run (digit0, conditional); toy2d: a folder of teacher runs named as the datasets")
    p.add_argument("--suffix", default="", help="appended to the names of the variants' runs")
    p.add_argument("--teacher-steps", type=int, default=5000)
    p.add_argument("--skip-teacher-rows", action="store_true", help="digit0, conditional: do not score the teacher's samplers again")
    p.add_argument("--variants", default="ect,cd,meanflow")
    p.add_argument("--steps", type=int, default=None, help="training steps of each distillation (default: the teacher's)")
    p.add_argument("--scratch-steps", type=int, default=None, help="training steps of the from-scratch variants (default: --steps)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--n", type=int, default=980)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--datasets", default="8gaussians,spiral,moons")
    p.add_argument("--process", default="edm", help="toy2d: the teachers' process (EDM's preconditioning keeps x0_hat bounded at sigma_max, where one step starts)")
    p.add_argument("--draws", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/fewstep"))
    args = p.parse_args()
    set_threads(args.threads)
    tasks = {"toy2d": toy2d, "scan": scan, "digit0": lambda a: digits(a, False), "conditional": lambda a: digits(a, True)}
    result = tasks[args.task](args)
    record = {"task": args.task, "settings": {k: str(v) for k, v in vars(args).items()},
              "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}", "result": result}
    dest = args.out / args.task / (f"{args.run.name}.json" if args.task == "scan" else f"results-{args.variants.replace(',', '-')}{args.suffix}.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(record, indent=2))
    print(f"saved {dest}")


if __name__ == "__main__":
    main()
