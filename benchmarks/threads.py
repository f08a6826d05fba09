"""The thread policy (ddpmctl.devices.set_threads), measured: P torch processes started at once
on one machine, each training the default 2-D model, with torch's default threads (one per core
in every process) against the policy (the cores divided among the P processes), and torch's
default threads with OMP_WAIT_POLICY=PASSIVE (OpenMP threads sleep instead of spinning at the
end of each parallel region).

    python benchmarks/threads.py                      # P = 1, 2, 4; 300 steps each
    python benchmarks/threads.py --procs 2 --steps 500 --network unet

Prints total and per-process training iterations per second; writes benchmarks/out/speed/threads.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

WORKER = r"""
import sys, time, torch
from ddpmctl import registry, speed
from ddpmctl.devices import set_threads
threads, steps, model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if threads != "default":
    set_threads(int(threads))
ours = speed.Ours(model, speed.MODELS[model]["batch_size"], torch.device("cpu"), False, False)
ours.train(3)
t0 = time.perf_counter()
ours.train(steps)
print(torch.get_num_threads(), steps / (time.perf_counter() - t0))
"""


def run(procs: int, threads: str, steps: int, model: str, passive: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    t0 = time.perf_counter()
    ps = [subprocess.Popen([sys.executable, "-c", WORKER, threads, str(steps), model], stdout=subprocess.PIPE, text=True, env=env)
          for _ in range(procs)]
    outs = [p.communicate()[0].split() for p in ps]
    wall = time.perf_counter() - t0
    rates = [float(o[1]) for o in outs]
    return {"procs": procs, "threads_per_proc": int(outs[0][0]), "mode": threads, "passive": passive, "it_per_s_each": rates,
            "it_per_s_total": sum(rates), "wall_s": wall}


def main() -> None:
    from ddpmctl.devices import cpu_count

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", default="1,2,4")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--model", default="2d", help="2d or mnist16")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/speed"))
    args = p.parse_args()
    cores = cpu_count()
    rows = []
    for n in [int(x) for x in args.procs.split(",")]:
        for mode, passive in (("default", False), (str(max(1, cores // n)), False), ("default", True)):
            r = run(n, mode, args.steps, args.model, passive)
            rows.append(r)
            what = "policy" if mode != "default" else "torch default" + (", OMP_WAIT_POLICY=PASSIVE" if passive else "")
            print(f"{n} processes x {r['threads_per_proc']} threads ({what}): "
                  f"{r['it_per_s_total']:.1f} it/s in total, each " + ", ".join(f"{x:.1f}" for x in r["it_per_s_each"]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "threads.json").write_text(json.dumps({"cores": cores, "model": args.model, "steps": args.steps, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
