"""Entry-point registries: lazy resolution, unknown names, broken plugins, third-party plugins."""

import subprocess
import sys
import textwrap

import pytest

from ddpmctl import registry
from ddpmctl.errors import OptionsError, UnknownNameError
from tests.conftest import assert_clean_error, assert_ok, cli

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
    """Ancestral sampling on every other timestep (a test plugin)."""
    return ddpm(denoiser, x_T, denoiser.schedule.T // 2, generator, callback, y)
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
    env = {"PYTHONPATH": str(fake_plugin)}
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
