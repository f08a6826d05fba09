"""2-D metrics: known values, floors, protocol."""

import numpy as np
import pytest
import torch

from ddpmctl import registry
from ddpmctl.metrics.toy2d import kl, sliced_wasserstein, w2, wasserstein


@pytest.fixture(scope="module")
def spiral():
    return registry.build("dataset", "spiral", {"n": 5000})


def test_w2_of_a_translation_is_the_shift():
    """W2(X, X + c) = |c| exactly: the identity coupling is optimal for a translation."""
    x = np.random.default_rng(0).normal(size=(300, 2))
    c = np.array([0.3, -0.4])
    assert w2(x, x) == pytest.approx(0.0, abs=1e-9)
    assert w2(x, x + c) == pytest.approx(0.5, rel=1e-9)


def test_metrics_on_real_data_are_near_their_floor_and_far_for_noise(spiral):
    real, _ = spiral.fresh(1000, 42)
    noise = torch.randn(1000, 2) * 2
    for fn, key in ((wasserstein, "w2"), (sliced_wasserstein, "sw2"), (kl, "kl(data||samples)")):
        good, bad = fn(real, spiral), fn(noise, spiral)
        assert good.floor[key] > 0
        assert good.values[key] < 1.5 * good.floor[key], (fn.__name__, good)
        assert bad.values[key] > 3 * bad.floor[key], (fn.__name__, bad)
        assert good.protocol["n"] == 1000 and good.protocol["n_ref"] == 1000


def test_kl_reports_both_directions_and_its_binning(spiral):
    r = kl(spiral.fresh(500, 1)[0], spiral, bins=20, range=3.0, alpha=0.5)
    assert set(r.values) == {"kl(data||samples)", "kl(samples||data)"}
    assert r.protocol["bins"] == 20 and r.protocol["range"] == [-3.0, 3.0] and "0.5" in r.protocol["smoothing"]
    assert all(v >= 0 for v in r.values.values())
