"""Bad input everywhere: each case exits non-zero with one sentence and no traceback.

The cases and their messages make the table in docs/errors.md; this test fails when the table
is out of date. Regenerate it with:  UPDATE_DOCS=1 pytest tests/test_errors_table.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ddpmctl import registry
from ddpmctl.checkpoint import content_hash
from tests.conftest import REPO, run_in_process, write_images

DOC = REPO / "docs" / "errors.md"


def run(args: list[str], env: dict[str, str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run `ddpmctl ARGS` in this process, wide enough that Typer's boxes do not wrap."""
    return run_in_process(args, env, monkeypatch, capsys, columns=300)


def message(err: str) -> str:
    """The sentence shown: our one red line, or the text inside Typer's usage-error box."""
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("error:")]
    if ours:
        return ours[0][len("error:"):].strip()
    boxed = [line.strip("│ ").strip() for line in lines if line.startswith("│")]
    return " ".join(boxed)


@pytest.fixture(scope="module")
def places(tiny_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    (root / "empty").mkdir()
    (root / "bad.toml").write_text("stepz = 3\n")
    (root / "broken.toml").write_text("steps = = 3\n")
    (root / "notes.txt").write_text("not samples\n")
    (root / "not-a-run").mkdir()
    write_images(root / "classes" / "cats", 4)
    (root / "classes" / "dogs").mkdir()
    write_images(root / "corrupt", 4)
    (root / "corrupt" / "img999.png").write_bytes(b"not a png")
    (root / "bom.toml").write_bytes(b"\xef\xbb\xbfsteps = 3\n")
    (root / "latin1.toml").write_bytes(b'name = "caf\xe9"\n')
    import numpy as np
    np.savez(root / "images.npz", samples=np.zeros((4, 1, 8, 8), np.uint8))
    damaged = root / "damaged"
    shutil.copytree(tiny_run, damaged)
    for ckpt in (damaged / "checkpoints").glob("*.safetensors"):
        ckpt.write_bytes(ckpt.read_bytes()[:300])
    import ddpmctl
    from tests.conftest import TINY_SETTINGS

    distilled = ddpmctl.distill(tiny_run, "consistency", name="distilled", runs_dir=root, steps=2, checkpoint_every=2).path
    other = ddpmctl.train(data="moons", name="moons", runs_dir=root, **{**TINY_SETTINGS, "steps": 2, "checkpoint_every": 2}).path
    return {"tmp": root, "run": tiny_run, "damaged": damaged, "distilled": distilled, "other": other, "broken": broken_runs(tiny_run, root / "broken")}


def broken_runs(run: Path, root: Path) -> dict[str, Path]:
    """Copies of a good run, each with one file damaged in a way that still parses (or nearly)."""
    ckpt = sorted((run / "checkpoints").glob("*.safetensors"))[-1]
    tensors, meta = load_file(ckpt), safe_open_meta(ckpt)
    first = next(iter(tensors))
    config = json.loads((run / "config.json").read_text())
    damage = {
        "config.json that is not JSON": lambda r: (r / "config.json").write_text("{not json"),
        "config.json that is a list": lambda r: (r / "config.json").write_text("[1, 2, 3]"),
        "config.json without its keys": lambda r: (r / "config.json").write_text("{}"),
        "config.json of another shape": lambda r: (r / "config.json").write_text(json.dumps({**config, "config": {"steps": "many"}})),
        "config.json that is not UTF-8": lambda r: (r / "config.json").write_bytes(b"\xff\xfe{}"),
        "config.json that is a folder": lambda r: ((r / "config.json").unlink(), (r / "config.json").mkdir()),
        "checkpoint missing a tensor": lambda r: rewrite(r, ckpt, {k: v for k, v in tensors.items() if k != first}, meta),
        "checkpoint with an extra tensor": lambda r: rewrite(r, ckpt, {**tensors, "ema/extra.weight": torch.zeros(3), "model/extra.weight": torch.zeros(3)}, meta),
        "checkpoint with a mis-shaped tensor": lambda r: rewrite(r, ckpt, {**tensors, first: torch.zeros(7, 7)}, meta),
        "checkpoint with bad metadata": lambda r: rewrite(r, ckpt, tensors, {**meta, "step": "\"soon\""}),
        "checkpoint without metadata": lambda r: rewrite(r, ckpt, tensors, {}),
        "latest pointer leading outside the run": lambda r: (r / "latest").write_text("../../../other/checkpoints/" + ckpt.name),
        "metrics.jsonl with odd records": lambda r: (r / "metrics.jsonl").write_text((r / "metrics.jsonl").read_text() + '[1, 2]\n3\n{"step": "x", "loss": "y"}\n"text"\n'),
        "stop.json that is not JSON": lambda r: (r / "stop.json").write_text("{"),
    }
    out = {}
    for i, (what, fn) in enumerate(damage.items()):
        dst = root / f"b{i:02d}"
        shutil.copytree(run, dst)
        fn(dst)
        out[what] = dst
    return out


def safe_open_meta(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def rewrite(run: Path, ckpt: Path, tensors: dict, meta: dict) -> None:
    """Replace every checkpoint of ``run`` by one with these tensors and metadata, its content hash correct."""
    for old in (run / "checkpoints").glob("*.safetensors"):
        old.unlink()
    meta = {**meta, "content_sha256": content_hash(tensors)} if meta else {}  # a well-formed file: the damage is in what it holds
    save_file(tensors, str(run / "checkpoints" / ckpt.name), metadata=meta)


def cases(p: dict) -> list[tuple[str, list[str], dict]]:
    t, run = p["tmp"], str(p["run"])
    empty_data = {"DDPMCTL_DATA_DIR": str(t / "empty")}
    return [
        ("unknown dataset", ["train", "--data", "spirall"], {}),
        ("unknown network", ["train", "--network", "transformer"], {}),
        ("unknown schedule", ["train", "--schedule", "quadratic2"], {}),
        ("unknown prediction", ["train", "--prediction", "score"], {}),
        ("out-of-range plugin option", ["train", "-o", "network.width=-3"], {}),
        ("wrongly typed plugin option", ["train", "-o", "data.noise=loud"], {}),
        ("unknown plugin option", ["train", "-o", "data.nosie=0.1"], {}),
        ("option without a kind", ["train", "-o", "width=3"], {}),
        ("out-of-range setting", ["train", "--steps", "0"], {}),
        ("negative learning rate", ["train", "--lr", "-1"], {}),
        ("missing config file", ["train", "--config", str(t / "missing.toml")], {}),
        ("unknown key in config file", ["train", "--config", str(t / "bad.toml")], {}),
        ("config file that is not TOML", ["train", "--config", str(t / "broken.toml")], {}),
        ("unknown environment variable", ["train"], {"DDPMCTL_STEPZ": "3"}),
        ("class conditioning on data without labels", ["train", "--data", "swissroll", "--cond", "class"], {}),
        ("CUDA asked for, none present", ["train", "--device", "cuda"], {"CUDA_VISIBLE_DEVICES": ""}),
        ("unknown device", ["train", "--device", "tpu"], {}),
        ("digit outside 0-9", ["train", "--data", "mnist16", "--digits", "12"], empty_data),
        ("MNIST not downloaded", ["train", "--data", "mnist16", "--digits", "0"], empty_data),
        ("empty image folder", ["train", "--data", "imagefolder", "-o", f"data.root={t / 'empty'}"], {}),
        ("image folder that does not exist", ["train", "--data", "imagefolder", "-o", f"data.root={t / 'nowhere'}"], {}),
        ("resume with a different network", ["train", "--resume", run, "-o", "network.width=64"], {}),
        ("resume with a different dataset", ["train", "--resume", run, "--data", "spiral"], {}),
        ("resume a finished run", ["train", "--resume", run], {}),
        ("resume a missing run", ["train", "--resume", str(t / "nope")], {}),
        ("sample a missing run", ["sample", str(t / "nope")], {}),
        ("sample a folder that is not a run", ["sample", str(t / "not-a-run")], {}),
        ("sample with only damaged checkpoints", ["sample", str(p["damaged"])], {}),
        ("unknown sampler", ["sample", run, "--sampler", "euler"], {}),
        ("invalid sampler option", ["sample", run, "-o", "variance=huge"], {}),
        ("more steps than the model has", ["sample", run, "--steps", "5000"], {}),
        ("--class on an unconditional model", ["sample", run, "--class", "3"], {}),
        ("zero samples", ["sample", run, "--n", "0"], {}),
        ("unknown metric", ["eval", run, "--metric", "fidd"], {}),
        ("samples file that does not exist", ["eval", run, "--samples", str(t / "none.npz")], {}),
        ("samples file that is not one", ["eval", run, "--samples", str(t / "notes.txt")], {}),
        ("show an unknown dataset", ["data", "show", "spirall"], {}),
        ("fetch from a folder without the files", ["data", "fetch", "mnist", "--from", str(t / "empty")], empty_data),
        ("show an unknown plugin", ["plugins", "show", "nothing"], {}),
        ("list an unknown plugin kind", ["plugins", "list", "--kind", "widgets"], {}),
        ("bench with an unknown sampler", ["bench", "quality", run, "--sampler", "nope", "--steps", "5"], {}),
        ("interpolate a missing run", ["interpolate", str(t / "nope")], {}),
        ("--until-metric without a comparison", ["train", "--until-metric", "wasserstein=0.1"], {}),
        ("--max-time that is not a duration", ["train", "--max-time", "15x"], {}),
        ("--until-metric without evaluations", ["train", "--until-metric", "w2<=0.1", "--eval-every", "0"], {}),
        ("--until-metric naming another metric than --eval-metric", ["train", "--until-metric", "fid<=3", "--eval-metric", "wasserstein"], {}),
        ("--until-metric on a value the metric lacks", ["train", "--data", "8gaussians", "-o", "data.n=500", "--eval-every", "10", "--eval-n", "50",
                                                         "--until-metric", "w3<=0.1", "--runs-dir", str(t / "never")], {}),
        ("--eval-metric for images on 2-D data", ["train", "--data", "8gaussians", "-o", "data.n=500", "--eval-every", "10", "--eval-n", "50",
                                                  "--eval-metric", "classifier-fid", "--runs-dir", str(t / "never")], {}),
        ("--per-class on an unconditional model", ["sample", run, "--per-class", "10"], {}),
        ("--export into a folder that is not empty", ["sample", run, "--export", str(t)], {}),
        ("--export of a 2-D model", ["sample", run, "--export", str(t / "new-folder")], {}),
        ("cas on 2-D samples", ["eval", run, "--metric", "cas", "--n", "50"], {}),
        ("eval a folder that is not an export", ["eval", run, "--samples", str(t / "empty")], {}),
        ("compare with a malformed --quality", ["compare", run, "--quality", "w2=0.1"], {}),
        ("compare on a quality no run measured", ["compare", run, "--quality", "fid<=3"], {}),
        ("compare a missing run", ["compare", run, str(t / "nope")], {}),
        ("distill a missing run", ["distill", str(t / "nope"), "--method", "consistency"], {}),
        ("distill without a method", ["distill", run], {}),
        ("distill with an unknown method", ["distill", run, "--method", "sharpen", "--runs-dir", str(t / "never")], {}),
        ("meanflow from a ddpm run", ["distill", run, "--method", "meanflow", "--runs-dir", str(t / "never")], {}),
        ("a teacher-calling method without a teacher", ["train", "--method", "consistency", "-o", "method.target=teacher", "--runs-dir", str(t / "never")], {}),
        ("distill a run that is itself distilled", ["distill", str(p["distilled"]), "--method", "consistency", "--runs-dir", str(t / "never")], {}),
        ("DDIM inversion of a few-step model", ["interpolate", str(p["distilled"]), "--images", "0,1"], {}),
        ("--with a run of other data", ["bench", "quality", run, "--with", str(p["other"]), "--steps", "5"], {}),
    ] + generated_cases(p)


# Commands that read a run, each as a user would type it (RUN replaced by the run's path).
READERS = {
    "sample": ["sample", "RUN", "--n", "4", "--steps", "3"],
    "eval": ["eval", "RUN", "--n", "20", "--steps", "3"],
    "interpolate": ["interpolate", "RUN", "--steps", "3"],
    "plot": ["plot", "RUN"],
    "resume": ["train", "--resume", "RUN", "--steps", "400"],
    "bench quality": ["bench", "quality", "RUN", "--steps", "3"],
}
# Damage the commands read past: records of metrics.jsonl that are not ddpmctl's are skipped, and
# a damaged stop.json is only a note about why a run stopped.
EDGES = ("metrics.jsonl with odd records", "stop.json that is not JSON")
# Bad values of one flag, for each command that takes it: (flag, value, what).
VALUES = [
    ("--seed", "-1", "a negative seed"), ("--seed", str(2**64), "a seed beyond 64 bits"),
    ("--n", "-5", "a negative --n"), ("--n", str(10**19), "--n in the quintillions"),
    ("--steps", "0", "zero steps"), ("--steps", "-3", "negative steps"), ("--steps", "many", "steps that are not a number"),
]
SAMPLING_VALUES = [("--guidance", "nan", "NaN guidance"), ("--guidance", "inf", "infinite guidance"), ("--guidance", "-inf", "negative infinite guidance")]
TRAIN_VALUES = [
    ("--batch-size", "0", "a zero batch"), ("--batch-size", str(10**12), "a batch that cannot fit in memory"), ("--lr", "nan", "a NaN learning rate"),
    ("--lr", "inf", "an infinite learning rate"), ("--seed", str(2**64), "a seed beyond 64 bits"), ("--ema-decay", "2", "an EMA decay above 1"),
    ("--max-time", "-5", "a negative --max-time"), ("--threads", "0", "zero threads"), ("--eval-every", "-1", "a negative --eval-every"),
    ("--name", "../../escape", "a run name that climbs out of --runs-dir"), ("--name", "/abs/run", "an absolute run name"),
    ("--name", ".", "the run name ."), ("--name", "", "an empty run name"), ("--name", "a/b", "a run name with a slash"),
    ("--p-uncond", "1.5", "a label-drop probability above 1"), ("--checkpoint-every", "0", "checkpoints every 0 steps"),
]
# Settings given through the environment with a bad value: the message must name the variable.
ENV_VALUES = {
    "STEPS": "abc", "BATCH_SIZE": "-2", "LR": "nan", "SEED": "-1", "EMA_DECAY": "1.5", "WARMUP": "soon", "LR_DECAY": "exponential",
    "WEIGHT_DECAY": "inf", "GRAD_CLIP": "0", "ON_NONFINITE": "ignore", "CHECKPOINT_EVERY": "0", "KEEP_CHECKPOINTS": "-1", "LOG_EVERY": "0",
    "EVAL_EVERY": "x", "EVAL_N": "1", "MAX_TIME": "forever", "THREADS": "0", "PRECISION": "fp8", "COND": "text", "P_UNCOND": "2",
    "PREDICTION": "score", "DATA_OPTIONS": "not-a-dict", "NETWORK_OPTIONS": "[1, 2]", "COMPILE": "maybe", "UNTIL_LOSS": "low",
    "UNTIL_METRIC": "w2 is small", "LEARN_SIGMA": "perhaps", "SNR_GAMMA": "-1",
}


def generated_cases(p: dict) -> list[tuple[str, list[str], dict]]:
    """The corpus beyond the hand-written rows: every reader on every damaged run; bad values of
    each numeric flag on each command that takes it; each setting through its environment variable;
    paths that name the wrong kind of thing."""
    t, run = p["tmp"], str(p["run"])
    out = []
    for damage, broken in p["broken"].items():
        if damage in EDGES:
            continue  # damage that commands read past: test_damage_readers_read_past
        for cmd, args in READERS.items():
            if cmd == "plot" and not damage.startswith("config.json"):
                continue  # plot reads no checkpoint
            out.append((f"{cmd}: {damage}", [str(broken) if a == "RUN" else a for a in args], {}))
    for cmd in ("sample", "eval", "interpolate", "bench quality"):
        base = [run if a == "RUN" else a for a in READERS[cmd]]
        for flag, value, what in VALUES + SAMPLING_VALUES:
            if cmd == "interpolate" and flag in ("--n", "--seed"):
                continue  # interpolate takes --seeds
            out.append((f"{cmd}: {what}", with_flag(base, flag, value), {}))
    never = ["--runs-dir", str(t / "never")]
    for flag, value, what in TRAIN_VALUES:
        out.append((f"train: {what}", ["train", "--data", "8gaussians", *never, flag, value], {}))
    for key, value in ENV_VALUES.items():
        out.append((f"train: DDPMCTL_{key}={value}", ["train", "--data", "8gaussians", *never], {f"DDPMCTL_{key}": value}))
    notes = str(t / "notes.txt")
    out += [
        ("interpolate: seeds beyond 64 bits", ["interpolate", run, "--seeds", f"1,{2**64}", "--steps", "3"], {}),
        ("interpolate: one seed", ["interpolate", run, "--seeds", "1", "--steps", "3"], {}),
        ("--runs-dir that is a file", ["train", "--data", "8gaussians", "--runs-dir", notes], {}),
        ("--out that is a file", ["sample", run, "--n", "4", "--steps", "3", "--out", notes], {}),
        ("--grid that is a folder", ["sample", run, "--n", "4", "--steps", "3", "--grid", str(t / "empty")], {}),
        ("--grid with an unknown image extension", ["sample", run, "--n", "4", "--steps", "3", "--grid", str(t / "grid.xyz")], {}),
        ("DDPMCTL_DATA_DIR that is a file", ["train", "--data", "mnist16", "--digits", "0", *never], {"DDPMCTL_DATA_DIR": notes}),
        ("--config that is a folder", ["train", "--config", str(t / "empty")], {}),
        ("--config with a byte-order mark", ["train", "--config", str(t / "bom.toml"), *never], {}),
        ("--config that is not UTF-8", ["train", "--config", str(t / "latin1.toml"), *never], {}),
        ("compare a file", ["compare", notes], {}),
        ("eval --samples of another run's shape", ["eval", run, "--samples", str(t / "images.npz")], {}),
        ("plugins show a kind without a name", ["plugins", "show", "network"], {}),
        ("data fetch of an unknown dataset", ["data", "fetch", "cifar100"], {}),
        ("autoencoder eval of a diffusion run", ["autoencoder", "eval", run], {}),
        ("autoencoder train on 2-D data", ["autoencoder", "train", "--data", "moons", *never], {}),
        ("an image folder with an empty class folder", ["train", "--data", "imagefolder", "-o", f"data.root={t / 'classes'}", *never], {}),
        ("an image folder with a file that is not an image", ["train", "--data", "imagefolder", "-o", f"data.root={t / 'corrupt'}", *never], {}),
        ("data fetch --from a folder holding a corrupt image", ["data", "fetch", "emoji32", "--from", str(t / "corrupt")], {"DDPMCTL_DATA_DIR": str(t / "fetched")}),
        ("sweep with an empty grid", ["sweep", "--name", "s", *never, "--grid", "lr="], {}),
        ("sweep over an unknown setting", ["sweep", "--name", "s", *never, "--grid", "speed=1,2"], {}),
    ]
    return out


def with_flag(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag`` set to ``value`` (replacing the flag's value when already there)."""
    if flag in args:
        i = args.index(flag)
        return [*args[: i + 1], value, *args[i + 2 :]]
    return [*args, flag, value]


def test_every_bad_input_gets_one_sentence(places, monkeypatch, capsys):
    registry.clear_cache()
    rows = []
    for what, args, env in cases(places):
        with monkeypatch.context() as m:
            if env.get("CUDA_VISIBLE_DEVICES") == "":  # this process may have started CUDA already, which the variable no longer hides
                m.setattr(torch.cuda, "is_available", lambda: False)
            before = tree(places["tmp"]) | tree(places["run"])
            code, out, err = run(args, env, monkeypatch, capsys)
            changed = before ^ (tree(places["tmp"]) | tree(places["run"]))
        shown = out + err
        assert not changed, f"{what}: a refused command changed files: {sorted(changed)[:6]}"
        assert code != 0, f"{what}: exit 0\n{shown}"
        assert "Traceback" not in shown, f"{what}:\n{shown}"
        msg = message(err)
        assert msg, f"{what}: no message\n{shown}"
        assert len([line for line in err.splitlines() if line.startswith("error:")]) <= 1, f"{what}:\n{err}"
        shown_args = " ".join(a if " " not in a else f'"{a}"' for a in args)
        rows.append((what, _normalise(shown_args, places), code, _normalise(msg, places)))
    assert len(rows) >= 150

    table = render(rows)
    if os.environ.get("UPDATE_DOCS"):
        DOC.write_text(table)
    assert DOC.read_text() == table, "docs/errors.md is out of date: run UPDATE_DOCS=1 pytest tests/test_errors_table.py"


def tree(root: Path) -> set[tuple[str, int, int]]:
    """Every file and folder under ``root``, with a file's size and modification time (a folder's
    own time changes with the lock a writer takes and drops)."""
    return {(str(f), f.stat().st_size, f.stat().st_mtime_ns) if f.is_file() else (str(f), -1, 0) for f in [root, *root.rglob("*")]}


def _normalise(text: str, places: dict) -> str:
    text = text.replace(str(places["damaged"]), "runs/damaged").replace(str(places["run"]), "runs/tiny")
    text = text.replace(str(places["tmp"]), "/tmp/x")
    text = re.sub(r"/tmp/pytest-of-[^/\s]+/pytest-\d+/[^/\s]+", "/tmp/x", text)
    return text.replace("|", "\\|")


def render(rows) -> str:
    lines = [
        "# What ddpmctl says when the input is wrong",
        "",
        "Generated by `tests/test_errors_table.py` (regenerate: `UPDATE_DOCS=1 pytest tests/test_errors_table.py`).",
        "Every row exits non-zero with one sentence and no traceback (`--debug` shows the traceback).",
        "Exit code 2 is a usage error found by the command-line parser; 1 is anything found later.",
        "`runs/tiny` is a small trained 2-D run; `/tmp/x` a scratch folder.",
        "",
        "| # | bad input | command | exit | message |",
        "|---|---|---|---|---|",
    ]
    for i, (what, args, code, msg) in enumerate(rows, 1):
        lines.append(f"| {i} | {what} | `ddpmctl {args}` | {code} | {msg} |")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("damage", EDGES)
def test_damage_readers_read_past(places, monkeypatch, capsys, damage):
    broken = places["broken"][damage]
    for args in (["plot", broken], ["compare", broken, places["run"], "--out", broken / "cmp.png"], ["sample", broken, "--n", "4", "--steps", "3", "--out", broken / "s"]):
        code, out, err = run(args, {}, monkeypatch, capsys)
        assert code == 0 and "Traceback" not in out + err, f"{args[0]}: {out}{err}"

