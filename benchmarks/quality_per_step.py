"""Quality against training steps (not time) for one ddpmctl objective on the phase-2 model:
classifier FID (n = 980, heun with 18 levels, 35 NFE) of the EMA weights at step marks. Steps do
not depend on what else runs, so two variants can run side by side at one thread each, e.g.
whether bf16 training costs quality per step:

    python benchmarks/quality_per_step.py --side edm --precision bf16 --marks 4000,5700 --max-steps 5700 --threads 1
    python benchmarks/quality_per_step.py --side edm --precision fp32 --marks 4000,5700 --max-steps 5700 --threads 1

The sides, settings and evaluation are benchmarks/objectives_time_to_quality.py's.
"""

from __future__ import annotations

import argparse
import json

from objectives_time_to_quality import SIDES, Ours, evaluate

from ddpmctl import load_dataset, registry
from ddpmctl.devices import pick_device, set_threads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", default="edm", choices=sorted(SIDES))
    p.add_argument("--precision", default="auto", help="auto (as `ddpmctl train`), fp32 or bf16")
    p.add_argument("--marks", default="4000,5700", help="training steps to evaluate at, comma-separated")
    p.add_argument("--max-steps", type=int, default=5000, help="the learning-rate schedule's length (cosine decay)")
    p.add_argument("--n", type=int, default=980)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    set_threads(args.threads)
    ds, device = load_dataset("mnist16", digits="0"), pick_device("auto")
    side = Ours(args.side, ds, device, args.seed, args.max_steps, args.precision)
    metric = registry.resolve("metric", "classifier-fid", None)
    for mark in map(int, args.marks.split(",")):
        side.train(mark - side.step)
        scores = evaluate(side, [("heun", 18)], args.n, metric)
        print(json.dumps({"side": args.side, "precision": args.precision, "bf16": side.loop.bf16, "step": side.step, **scores["heun:18"]}), flush=True)


if __name__ == "__main__":
    main()
