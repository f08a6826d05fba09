"""How long the command line takes to answer: the wall time of `ddpmctl --help`, `--version`,
`train --help` and a bash completion, each started as a fresh process (interpreter start
included) the given number of times, interleaved, and the median reported. Issue 20's bar:
`--help` and `--version` under 0.5 s, `train --help` under 1 s. Run it on a quiet machine.

    python benchmarks/cli_startup.py                 # 10 starts of each
    python benchmarks/cli_startup.py --repeats 20

Prints a table, and writes benchmarks/out/cli_startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out" / "cli_startup.json"
CASES = {  # name -> (arguments after `python -m ddpmctl`, extra environment, the bar in seconds)
    "ddpmctl --help": (["--help"], {}, 0.5),
    "ddpmctl --version": (["--version"], {}, 0.5),
    "ddpmctl train --help": (["train", "--help"], {}, 1.0),
    "bash completion of `ddpmctl tr`": ([], {"_DDPMCTL_COMPLETE": "complete_bash", "COMP_WORDS": "ddpmctl tr", "COMP_CWORD": "1"}, 0.5),
}


def start(args: list[str], extra: dict[str, str]) -> float:
    """Seconds from starting `python -m ddpmctl ARGS` to its exit."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DDPMCTL_")}, **extra}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ddpmctl", *args], capture_output=True, env=env)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"`ddpmctl {' '.join(args)}` failed with exit {r.returncode}: {r.stderr.decode()[-500:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10, help="starts of each command (default 10)")
    a = ap.parse_args()
    for args, extra, _ in CASES.values():  # one start each first: files cached, as a user's second call finds them
        start(args, extra)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(a.repeats):  # interleaved, so that a busy moment of the machine is shared by all
        for name, (args, extra, _) in CASES.items():
            times[name].append(start(args, extra))
    rows = []
    print(f"{'command':<34} {'median s':>9} {'min s':>7} {'max s':>7} {'bar s':>6}  verdict")
    for name, (_, _, bar) in CASES.items():
        t = times[name]
        median = statistics.median(t)
        rows.append({"command": name, "median_s": median, "min_s": min(t), "max_s": max(t), "bar_s": bar, "runs_s": t})
        print(f"{name:<34} {median:>9.3f} {min(t):>7.3f} {max(t):>7.3f} {bar:>6.1f}  {'ok' if median < bar else 'OVER'}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"{a.repeats} starts each, interleaved; Python {platform.python_version()}, {os.cpu_count()} cores, load average {load}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"repeats": a.repeats, "python": platform.python_version(), "cores": os.cpu_count(),
                               "load_average_1min": load, "rows": rows}, indent=2))
    print(f"saved {OUT}")


if __name__ == "__main__":
    main()
