"""Entry-point registries: lazy resolution, unknown names, broken plugins, third-party plugins."""

import subprocess
import sys
import textwrap

import pytest

from ddpmctl import registry
from ddpmctl.errors import OptionsError, UnknownNameError
from tests.conftest import assert_clean_error, assert_ok, cli, on_pythonpath

BUILTINS = {
    "dataset": {"8gaussians", "gaussian-mixture", "moons", "swissroll", "spiral", "checkerboard", "circles"},
    "network": {"mlp"},
    "schedule": {"linear", "cosine"},
    "sampler": {"ddpm"},
    "metric": {"kl", "wasserstein", "sliced-wasserstein"},
}


@pytest.mark.parametrize("kind", list(BUILTINS))
def test_builtins_are_registered_as_entry_points(kind):
    assert BUILTINS[kind] <= set(registry.names(kind))
    for name in BUILTINS[kind]:
        assert registry.entry(kind, name).dist == "ddpmctl"


@pytest.mark.parametrize("kind", list(registry.KINDS))
def test_every_registered_plugin_loads_and_has_options(kind):
    for name in registry.names(kind):
        obj = registry.load(kind, name)
        required = [f for f, info in obj.Options.model_fields.items() if info.is_required()]
        if not required:
            obj.Options()  # the defaults validate
        for field in required:  # a required option (a folder, say) is documented
            assert obj.Options.model_fields[field].description, f"{kind} {name}: option {field} has no help"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownNameError) as err:
        registry.load("dataset", "spirall")
    assert "spirall" in str(err.value) and "spiral" in str(err.value) and "8gaussians" in str(err.value)


def test_invalid_option_is_one_sentence_naming_the_option():
    with pytest.raises(OptionsError) as err:
        registry.validate_options("dataset", "spiral", {"noise": -1})
    assert "noise" in str(err.value) and "-1" in str(err.value)
    with pytest.raises(OptionsError) as err:
        registry.validate_options("dataset", "spiral", {"nosie": 0.1})
    assert "nosie" in str(err.value) and "not a known option" in str(err.value)


def test_resolving_a_name_imports_only_that_plugin():
    code = textwrap.dedent("""
        import sys
        from ddpmctl import registry
        registry.load("dataset", "spiral")
        assert "ddpmctl.datasets.toy2d" in sys.modules
        for mod in ("ddpmctl.metrics.toy2d", "ddpmctl.networks.mlp", "ot"):
            assert mod not in sys.modules, mod
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


FAKE_MODULE = '''
"""A third-party plugin package, made on the fly by the test."""
import math
import torch
from pydantic import Field
from ddpmctl.datasets.base import Dataset
from ddpmctl.registry import PluginOptions, with_options
from ddpmctl.samplers.ddpm import ddpm

class RingOptions(PluginOptions):
    n: int = Field(4000, ge=1)
    radius: float = Field(1.5, gt=0)

@with_options(RingOptions)
def ring(n=4000, radius=1.5):
    """Points on a ring (a test plugin)."""
    def draw(m, seed):
        g = torch.Generator().manual_seed(seed)
        a = torch.rand(m, generator=g) * 2 * math.pi
        return torch.stack([a.cos(), a.sin()], 1) * radius + 0.05 * torch.randn(m, 2, generator=g), None
    return Dataset("ring", draw(n, 0)[0], fresh_fn=lambda m, s: draw(m, 1000 + s))

class HalfOptions(PluginOptions):
    pass

@with_options(HalfOptions)
def half(denoiser, x_T, steps=None, generator=None, callback=None, y=None):
    """Ancestral sampling on every other level (a test plugin)."""
    return ddpm(denoiser, x_T, denoiser.process.max_steps // 2, generator, callback, y)
'''


@pytest.fixture
def fake_plugin(tmp_path):
    """A distribution `fakeplug` with a dataset, a sampler and a broken metric, on sys.path."""
    (tmp_path / "fakeplug.py").write_text(FAKE_MODULE)
    info = tmp_path / "fakeplug-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(
        "[ddpmctl.datasets]\nring = fakeplug:ring\n\n"
        "[ddpmctl.samplers]\nhalf = fakeplug:half\n\n"
        "[ddpmctl.metrics]\nbroken = fakeplug_does_not_exist:metric\n"
    )
    return tmp_path


def test_a_third_party_plugin_is_used_through_the_cli(fake_plugin, tmp_path):
    env = on_pythonpath(fake_plugin)
    listing = cli("plugins", "list", env=env)
    assert_ok(listing)
    rows = {line.split("│")[2].strip(): line for line in listing.stdout.splitlines() if line.count("│") >= 5}
    assert "fakeplug" in rows["ring"] and "1.2.3" in rows["ring"] and "ok" in rows["ring"]
    assert "broken" in rows["broken"] and "ModuleNotFoundError" in rows["broken"]
    assert "ok" in rows["spiral"] and "ok" in rows["half"]  # one broken plugin breaks nothing else

    runs = tmp_path / "runs"
    train = cli("train", "--data", "ring", "--name", "r", "--runs-dir", runs, "--steps", "60",
                "-o", "network.width=16", "-o", "network.depth=1", "-o", "schedule.T=40", env=env)
    assert_ok(train)
    sample = cli("sample", runs / "r", "--n", "64", "--sampler", "half", env=env)
    assert_ok(sample)
    assert "20 network evaluations" in sample.stdout
    assert_clean_error(cli("eval", runs / "r", "--metric", "broken", "--n", "32", env=env), "broken", "fakeplug")
    assert_clean_error(cli("train", "--data", "ring", "-o", "data.radius=-1", "--runs-dir", runs, env=env), "radius")


BROKEN_MODULE = '''
"""A plugin package whose import fails, as when one of its own dependencies is missing."""
raise ImportError("brokenplug needs libfoo >= 2")
'''


@pytest.fixture
def broken_plugins(tmp_path, monkeypatch):
    """On sys.path: `brokenplug` (its module raises ImportError), `clashplug` (registers the
    built-in name `moons` again) and `staleplug` (metadata left behind by an uninstall)."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "brokenplug.py").write_text(BROKEN_MODULE)
    (root / "clashplug.py").write_text("from ddpmctl.datasets.toy2d import TwoMoons as moons\n")
    for dist, version, entry_points in [
        ("brokenplug", "0.3", "[ddpmctl.samplers]\nshaky = brokenplug:sampler\n\n[ddpmctl.networks]\nshakynet = brokenplug:Net\n"),
        ("clashplug", "2.0", "[ddpmctl.datasets]\nmoons = clashplug:moons\n"),
        ("staleplug", "1.0", "[ddpmctl.schedules]\nstale = staleplug_was_uninstalled:schedule\n"),
    ]:
        info = root / f"{dist}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(entry_points)
    monkeypatch.syspath_prepend(str(root))
    registry.clear_cache()
    yield root
    registry.clear_cache()  # forget the fake distributions before sys.path is restored


def test_broken_clashing_and_stale_plugins_leave_everything_else_working(broken_plugins, tmp_path, monkeypatch, capsys):
    """Issue 7: uninstalling a plugin, or breaking its import, leaves every other command
    working, and `plugins list` says what is wrong."""
    from tests.conftest import cli_in_process

    def ddpmctl(*args):
        return cli_in_process(list(args), {}, monkeypatch, capsys)

    code, out = ddpmctl("plugins", "list")
    assert code == 0, out
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) >= 6 and cells[2]:
            rows.setdefault(cells[2], []).append(line)
    assert "broken" in rows["shaky"][0] and "ImportError: brokenplug needs libfoo >= 2" in rows["shaky"][0]
    assert "brokenplug" in rows["shakynet"][0] and "ImportError" in rows["shakynet"][0]
    assert "broken" in rows["stale"][0] and "ModuleNotFoundError" in rows["stale"][0] and "staleplug" in rows["stale"][0]
    assert len(rows["moons"]) == 2 and all("name clash" in r for r in rows["moons"])
    for name in ("spiral", "ddpm", "mlp", "linear", "kl"):
        assert "ok" in rows[name][0], rows[name]
    assert "are broken; the others work" in out

    # Every other name still works: train and sample with built-ins.
    runs = tmp_path / "runs"
    tiny = ["--steps", "20", "-o", "network.width=16", "-o", "network.depth=1", "-o", "schedule.T=30", "-o", "data.n=500"]
    code, out = ddpmctl("train", "--data", "spiral", "--name", "s", "--runs-dir", runs, *tiny)
    assert code == 0, out
    code, out = ddpmctl("sample", runs / "s", "--n", "32", "--sampler", "ddim", "--steps", "10")
    assert code == 0, out

    # The broken names each stop with one sentence naming the package and what to do.
    for args, fragments in [
        (["sample", runs / "s", "--n", "32", "--sampler", "shaky"], ["shaky", "brokenplug 0.3", "failed to import", "libfoo"]),
        (["train", "--network", "shakynet", "--runs-dir", runs], ["shakynet", "brokenplug", "failed to import"]),
        (["train", "--schedule", "stale", "--runs-dir", runs], ["stale", "staleplug", "No module named"]),
        (["train", "--data", "moons", "--runs-dir", runs], ["registered twice", "ddpmctl", "clashplug 2.0", "uninstall one"]),
        (["plugins", "show", "shaky"], ["brokenplug", "failed to import"]),
    ]:
        code, out = ddpmctl(*args)
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert code == 1 and "Traceback" not in out and len(errors) == 1, out
        for fragment in fragments:
            assert fragment in errors[0], (fragment, errors[0])


def test_a_run_whose_plugin_was_uninstalled_says_so(fake_plugin, tmp_path, monkeypatch, capsys):
    """Train with a plugin dataset, then uninstall the plugin: runs made with built-ins still
    train and sample, and sampling the plugin's run is one sentence naming what is missing."""
    from tests.conftest import cli_in_process

    runs = tmp_path / "runs"
    tiny = ["--steps", "20", "-o", "network.width=16", "-o", "network.depth=1", "-o", "schedule.T=30", "-o", "data.n=500"]
    try:
        with monkeypatch.context() as m:
            m.syspath_prepend(str(fake_plugin))
            registry.clear_cache()
            code, out = cli_in_process(["train", "--data", "ring", "--name", "r", "--runs-dir", runs, *tiny], {}, monkeypatch, capsys)
            assert code == 0, out
        sys.modules.pop("fakeplug", None)  # uninstalled: off sys.path and out of memory
        registry.clear_cache()

        code, out = cli_in_process(["train", "--data", "moons", "--name", "m", "--runs-dir", runs, *tiny], {}, monkeypatch, capsys)
        assert code == 0, out
        code, out = cli_in_process(["sample", runs / "m", "--n", "16", "--steps", "5"], {}, monkeypatch, capsys)
        assert code == 0, out
        code, out = cli_in_process(["sample", runs / "r", "--n", "16", "--steps", "5"], {}, monkeypatch, capsys)
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert code == 1 and "Traceback" not in out and len(errors) == 1, out
        assert "unknown dataset 'ring'" in errors[0], errors[0]
    finally:
        registry.clear_cache()
