"""Contract checks for plugins, for plugin authors and for ddpmctl's own suite.

Each ``check_*`` resolves a plugin by name through the registry (so it tests what users get)
and raises AssertionError naming the broken promise. Use them from pytest:

    from ddpmctl.testing import check_sampler_contract
    def test_my_sampler():
        check_sampler_contract("my-sampler")
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ddpmctl import registry
from ddpmctl.datasets.base import Dataset
from ddpmctl.denoiser import Denoiser
from ddpmctl.errors import OptionsError
from ddpmctl.metrics.base import MetricResult
from ddpmctl.schedules import Schedule


def check_schedule_contract(name: str, options: dict | None = None) -> Schedule:
    s = registry.build("schedule", name, options)
    assert isinstance(s, Schedule), f"schedule {name!r} must return a ddpmctl.schedules.Schedule"
    a = s.alpha_bar
    assert a.dtype == torch.float64 and a.ndim == 1 and s.T >= 2, "alpha_bar must be a 1-D float64 tensor"
    assert bool((a > 0).all() and (a < 1).all()), "alpha_bar must lie in (0, 1)"
    assert bool((a[1:] <= a[:-1]).all()), "alpha_bar must not increase"
    assert a[0] > 0.9 and a[-1] < 0.05, f"alpha_bar should start near 1 and end near 0 (got {a[0]:.3g} .. {a[-1]:.3g})"
    if options and "T" in options:
        assert s.T == options["T"], "the schedule must honour its T option"
    return s


def check_dataset_contract(name: str, options: dict | None = None) -> Dataset:
    ds = registry.build("dataset", name, options)
    assert isinstance(ds, Dataset), f"dataset {name!r} must return a ddpmctl.datasets.base.Dataset"
    assert len(ds) > 0 and ds.x.dtype == torch.float32, "x must be a non-empty float32 tensor"
    assert ds.kind in ("points", "images"), "kind must be 'points' or 'images'"
    assert torch.isfinite(ds.x).all(), "x must be finite"
    if ds.kind == "images":
        assert ds.x.ndim == 4 and ds.x.min() >= -1 and ds.x.max() <= 1, "images are (N, C, H, W) in [-1, 1]"
    if ds.y is not None:
        assert ds.y.dtype == torch.int64 and len(ds.y) == len(ds), "labels are int64, one per example"
        assert ds.num_classes > 0 and 0 <= int(ds.y.min()) and int(ds.y.max()) < ds.num_classes
    n = min(64, len(ds))
    a, _ = ds.fresh(n, 0)
    b, _ = ds.fresh(n, 0)
    c, _ = ds.fresh(n, 1)
    assert a.shape == (n, *ds.shape), "fresh(n, seed) must return n examples of the dataset's shape"
    assert torch.equal(a, b), "fresh(n, seed) must be deterministic for a seed"
    assert not torch.equal(a, c), "fresh draws for different seeds must differ"
    return ds


def wake(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` with its zero-initialised layers (a U-Net's or DiT's output, DiT's adaLN gates, a
    second noise embedding) given small random weights, so that the noise level and the label
    reach the output of an untrained network; in eval mode."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


def refusals(*makers: Callable[[], object], error: type[Exception] = OptionsError) -> list[str]:
    """The messages of ``makers`` that must each refuse (bad options or data for a plugin), checked
    to be ``error`` and one sentence on one line, as users get them."""
    messages = []
    for make in makers:
        try:
            make()
        except error as exc:
            messages.append(str(exc))
        else:
            raise AssertionError(f"refusal {len(messages) + 1} of {len(makers)} raised nothing; expected {error.__name__}")
    for m in messages:
        assert m.endswith(".") and m.count(". ") == 0 and "\n" not in m, f"not one sentence: {m!r}"
    return messages


def check_network_contract(name: str, options: dict | None = None, data_shape=(2,), num_classes: int = 3) -> None:
    B = 4
    x = torch.randn(B, *data_shape)
    t = torch.randint(0, 1000, (B,))
    net = registry.build("network", name, options, data_shape=tuple(data_shape), num_classes=0)
    out = net(x, t)
    assert out.shape == x.shape, f"output {tuple(out.shape)} must have x_t's shape {tuple(x.shape)}"
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad), "every parameter must get a gradient"

    # A network whose last layer starts at zero (U-Net, DiT) answers 0 to every label: woken.
    cond = wake(registry.build("network", name, options, data_shape=tuple(data_shape), num_classes=num_classes))
    y = torch.tensor([0, 1, 2, num_classes])[:B]  # the last is the null label
    out_c = cond(x, t, y)
    assert out_c.shape == x.shape
    null = cond(x, t, torch.full_like(y, num_classes))
    zeros = cond(x, t, torch.zeros_like(y))
    assert not torch.allclose(zeros, null), "labels must change the output"
    assert torch.allclose(cond(x, t, None), null, atol=1e-6), "no labels (None) must be the null label"
    # The rows of a batch are independent: a mixed batch equals the separate ones.
    assert torch.allclose(out_c[0], zeros[0], atol=1e-5) and torch.allclose(out_c[3], null[3], atol=1e-5), "each row must read its own label"

    double = registry.build("network", name, options, data_shape=tuple(data_shape), num_classes=0, out_mult=2)
    assert double(x, t).shape == (B, 2 * data_shape[0], *data_shape[1:]), "out_mult=2 must double the channels"


class _OnePoint(torch.nn.Module):
    """The exact eps-predictor when all data is one point."""

    def __init__(self, schedule: Schedule, point: torch.Tensor):
        super().__init__()
        self.schedule, self.point = schedule, point
        self.p = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x_t, t, y=None):  # t: the (float) timestep, on the schedule's levels here
        a = self.schedule.alpha_bar[t.round().long()].to(x_t).reshape(-1, *([1] * (x_t.ndim - 1)))
        return (x_t - a.sqrt() * self.point) / (1 - a).sqrt()


def check_sampler_contract(name: str, options: dict | None = None, steps=(10, 50), atol: float = 1e-3) -> None:
    """An oracle denoiser on a one-point dataset makes the sampler return that point; the sampler
    is a pure function of its inputs and generator; NFE and callbacks are reported."""
    fn, opts = registry.resolve("sampler", name, options)
    schedule = registry.build("schedule", "linear", {"T": 200})
    point = torch.tensor([0.7, -1.3], dtype=torch.float64)
    den = Denoiser(_OnePoint(schedule, point), schedule)
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for S in steps:
        calls = []
        x0, nfe = fn(den, x_T.clone(), S, torch.Generator().manual_seed(1), lambda i, n, t, x, x0: calls.append(i), None, **opts.model_dump())
        assert x0.shape == x_T.shape, "the sampler must return x_0 of x_T's shape"
        assert isinstance(nfe, int) and nfe > 0, "the sampler must return its number of network evaluations"
        assert torch.isfinite(x0).all()
        err = (x0 - point).abs().max().item()
        assert err < atol, f"with an oracle denoiser on one point, {name} at {S} steps ends {err:.2e} away from it"
        assert calls and calls == sorted(calls), "callback(i, ...) must be called with increasing i"
        again, _ = fn(den, x_T.clone(), S, torch.Generator().manual_seed(1), None, None, **opts.model_dump())
        assert torch.equal(again, x0), "same inputs and generator seed must give the same samples"
        gens = [torch.Generator().manual_seed(k) for k in range(4)]
        x_list, _ = fn(den, x_T.clone(), S, gens, None, None, **opts.model_dump())
        assert x_list.shape == x_T.shape, "a list of generators (one per block of rows) must be accepted"


def check_metric_contract(name: str, options: dict | None = None) -> MetricResult:
    """On 2-D data: same keys in values and floor, finite numbers, a protocol with n."""
    ds = registry.build("dataset", "8gaussians", {"n": 2000})
    fn, opts = registry.resolve("metric", name, options)
    r = fn(ds.fresh(300, 7)[0], ds, **opts.model_dump())
    assert isinstance(r, MetricResult)
    assert set(r.values) == set(r.floor) and r.values, "values and floor must have the same keys"
    assert all(math.isfinite(v) for v in [*r.values.values(), *r.floor.values()])
    assert r.protocol.get("n") == 300, "the protocol must record the number of samples"
    return r
