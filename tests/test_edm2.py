"""The EDM2 U-Net: the plugin contract, shapes, a zero output at the start, magnitude preservation,
forced weight normalisation, training (plain, EDM loss, MeanFlow's jvp), options and errors."""

import math

import pytest
import torch
from torch import nn

from ddpmctl import registry
from ddpmctl.errors import OptionsError
from ddpmctl.methods import MeanFlow, MeanFlowLoss
from ddpmctl.networks.edm2 import Block, EDM2UNet, MPConv, fourier_features, mp_cat, mp_silu, mp_sum
from ddpmctl.pipeline import start_from
from ddpmctl.processes import EDM, Flow
from ddpmctl.testing import check_network_contract, refusals, wake

SMALL = {"channels": 16, "channel_mult": (1, 2)}  # levels 8 and 4, attention at 4


def _inputs(shape, B=3, num_classes=0, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, *shape, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g).float()
    y = torch.randint(0, num_classes, (B,), generator=g) if num_classes else None
    return x, t, y


def _rms(x: torch.Tensor) -> float:
    return x.square().mean().sqrt().item()


def _train(net: nn.Module, x, t, y=None, steps: int = 8) -> list[float]:
    """A few Adam steps towards an output that depends on x and t; the losses."""
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    goal = x.repeat(1, net.out_mult, 1, 1) * (t / 1000)[:, None, None, None]
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = (net(x, t, y) - goal).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    net.eval()
    return losses


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 8, 8)])
def test_keeps_the_plugin_contract(shape):
    check_network_contract("edm2", SMALL, data_shape=shape)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 8, 8), (1, 8, 12)])
@pytest.mark.parametrize("out_mult", [1, 2])
def test_output_has_the_shape_of_x_t_times_out_mult(shape, out_mult):
    net = EDM2UNet(**SMALL, data_shape=shape, out_mult=out_mult)
    x, t, _ = _inputs(shape)
    out = net(x, t)
    assert out.shape == (3, shape[0] * out_mult, *shape[1:]) and out.dtype == torch.float32


def test_parameter_count_at_the_defaults_matches_the_default_unet():
    net = registry.build("network", "edm2", {}, data_shape=(1, 16, 16), num_classes=0)
    n = sum(p.numel() for p in net.parameters())
    print(f"edm2 at its defaults for (1, 16, 16): {n:,} parameters")
    assert 1.0e6 <= n <= 1.25e6


def test_starts_as_a_zero_output():
    """The output MPConv's gain starts at 0: exactly 0 for any input, noise level and label."""
    net = EDM2UNet(**SMALL, data_shape=(1, 8, 8), num_classes=3, out_mult=2)
    x, t, y = _inputs((1, 8, 8), num_classes=3)
    other, _, _ = _inputs((1, 8, 8), seed=2)
    assert net(x, t, y).abs().max() == 0 and net(10 * other, t * 0, None).abs().max() == 0


def test_fixed_function_layers_preserve_unit_variance():
    """MP-SiLU, MP-sum and MP-cat of independent unit-variance inputs, the Fourier features of
    any noise level, and an MPConv on white noise all have unit RMS."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 64, 16, 8, 8, generator=g)
    assert _rms(mp_silu(a)) == pytest.approx(1, abs=0.02)
    for t in (0.3, 0.5, 0.9):
        assert _rms(mp_sum(a, b, t)) == pytest.approx(1, abs=0.02)
        cat = mp_cat(a, b[:, :4], t)  # 16 + 4 channels
        assert cat.shape[1] == 20 and _rms(cat) == pytest.approx(1, abs=0.02)
        assert _rms(cat[:, 16:]) / _rms(cat[:, :16]) == pytest.approx(t / (1 - t) * math.sqrt(16 / 4), rel=0.03)
    features = fourier_features(torch.tensor([0.0, 1.0, 999.0, -1500.0]), 32)
    torch.testing.assert_close(features.square().mean(1), torch.ones(4))
    assert _rms(MPConv(16, 32, 1)(a)) == pytest.approx(1, abs=0.05)


def test_blocks_keep_the_magnitude_a_plain_conv_stack_loses():
    """At initialisation, unit-variance activations stay near unit RMS through a stack of MP blocks
    (decoder blocks: no pixel norm to restore it; every second with attention), and through every
    encoder block of the network; the same depth of default-initialised convolutions and SiLUs
    shrinks them a hundredfold."""
    torch.manual_seed(0)
    h, emb = torch.randn(16, 16, 8, 8), torch.randn(16, 32)
    plain = h
    for i in range(4):
        h = Block(16, 16, 32, "dec", heads=2 if i % 2 else 0)(h, emb)
        plain = nn.functional.silu(nn.Conv2d(16, 16, 3, padding=1, bias=False)(plain))
        assert 0.7 < _rms(h) < 1.3, f"after block {i + 1}: RMS {_rms(h):.3f}"
    assert _rms(plain) < 0.01
    net = EDM2UNet(**SMALL, data_shape=(1, 8, 8)).eval()
    seen = []
    for block in [net.conv_in, *net.enc]:
        block.register_forward_hook(lambda module, inputs, out: seen.append(_rms(out)))
    net(*_inputs((1, 8, 8), B=16)[:2])
    assert len(seen) == 4 and all(0.7 < r < 1.3 for r in seen), seen


def test_forced_weight_normalisation_keeps_each_stored_row_at_norm_sqrt_fan_in():
    """The layer uses w_i / ||w_i||, so the stored scale does not change the output; a forward in
    training puts the stored rows back at ||w_i|| = sqrt(fan_in) (also after an optimiser step),
    while evaluation and a no_grad forward leave them as they are."""
    net = wake(EDM2UNet(**SMALL, data_shape=(1, 8, 8), num_classes=3))
    convs = [m for m in net.modules() if isinstance(m, MPConv)]
    x, t, y = _inputs((1, 8, 8), num_classes=3)

    def row_norms(m):
        return m.weight.detach().flatten(1).norm(dim=1) / math.sqrt(m.weight[0].numel())  # 1 on the sphere

    def on_sphere():
        return all(torch.allclose(row_norms(m), torch.ones(m.weight.shape[0]), rtol=1e-3) for m in convs)

    before = net(x, t, y)
    with torch.no_grad():
        for m in convs:
            m.weight.mul_(3)
    torch.testing.assert_close(net(x, t, y), before, rtol=1e-3, atol=1e-4)
    net.train()
    with torch.no_grad():
        net(x, t, y)
    assert not on_sphere()  # evaluation and no_grad: stored weights untouched
    opt = torch.optim.Adam(net.parameters(), 0.1)
    for _ in range(2):
        opt.zero_grad()
        loss = net(x, t, y).square().mean()
        assert on_sphere()
        loss.backward()
        opt.step()
    assert not on_sphere()  # the step moved them off
    net(x, t, y)
    assert on_sphere()


def test_a_few_adam_steps_reduce_the_loss_and_reach_x_and_t():
    net = EDM2UNet(**SMALL, data_shape=(1, 8, 8), out_mult=2)
    x, t, _ = _inputs((1, 8, 8))
    losses = _train(net, x, t)
    assert losses[-1] < 0.9 * losses[0]
    other, _, _ = _inputs((1, 8, 8), seed=2)
    assert not torch.allclose(net(x, t), net(other, t))
    assert not torch.allclose(net(x, torch.full((3,), 10.0)), net(x, torch.full((3,), 900.0)))


def test_one_step_of_the_edm_loss():
    """Inside the training objective: the EDM loss of a class-conditional net (with label dropout)
    is finite and falls on a fixed batch (slowly: the output gain starts at 0 and Adam moves it by
    about the learning rate per step)."""
    torch.manual_seed(0)
    net = registry.build("network", "edm2", SMALL, data_shape=(1, 8, 8), num_classes=3)
    loss_fn = EDM(sigma_data=0.5).loss(p_uncond=0.2, num_classes=3)
    x0, y = torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 3
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = loss_fn(net, x0, y, torch.Generator().manual_seed(0))  # the same levels and noise each step
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.97 * losses[0]


def test_unconditional_net_ignores_labels():
    net = wake(EDM2UNet(**SMALL, data_shape=(1, 8, 8)))
    x, t, _ = _inputs((1, 8, 8))
    assert torch.equal(net(x, t), net(x, t, torch.zeros(3, dtype=torch.long)))


def test_two_noise_inputs_start_as_the_teacher_and_train_through_jvp():
    """noise_inputs=2: the second level's embedding (``embed.mlp2``) starts with gain 0, so a net
    started from a one-level teacher is the teacher; MeanFlow's forward-mode derivative runs
    through it in training mode (where forced weight normalisation would mutate a captured tensor)."""
    one = wake(EDM2UNet(**SMALL, data_shape=(1, 8, 8), num_classes=3))
    two = EDM2UNet(**SMALL, data_shape=(1, 8, 8), num_classes=3, noise_inputs=2)
    start_from(two, one)
    x, t, y = _inputs((1, 8, 8), num_classes=3)
    torch.testing.assert_close(two.eval()(x, torch.stack([t, torch.rand(3) * 500], 1), y), one(x, t, y))
    loss = MeanFlowLoss(MeanFlow(r_fraction=0.5), Flow(), 0.1, 3)
    value = loss(two.train(), torch.randn(8, 1, 8, 8).clamp(-1, 1), torch.randint(0, 3, (8,)), torch.Generator().manual_seed(0))
    value.backward()
    assert torch.isfinite(value) and all(p.grad is not None and torch.isfinite(p.grad).all() for p in two.parameters())


def test_built_through_the_registry_with_validated_options():
    registry.clear_cache()
    net = registry.build("network", "edm2", {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 2}, data_shape=(1, 8, 8), num_classes=0)
    assert isinstance(net, EDM2UNet) and len(net.enc) == 5  # 2 blocks, a down block, 2 blocks
    assert sum(net.reads_skip) == 6 and len(net.dec) == 2 + 3 + 1 + 3
    opts = registry.validate_options("network", "edm2", {})
    assert (opts.channels, opts.channel_mult, opts.num_res_blocks) == (32, (1, 2, 2), 1)
    with pytest.raises(OptionsError, match="chanels"):
        registry.validate_options("network", "edm2", {"chanels": 16})
    with pytest.raises(OptionsError, match="dropout"):
        registry.validate_options("network", "edm2", {"dropout": 1.5})
    with pytest.raises(OptionsError, match="num_heads 3 does not divide the 16 channels"):  # before any data is loaded
        registry.validate_options("network", "edm2", {"channels": 16, "num_heads": 3})


def test_points_odd_sides_and_heads_are_one_sentence_errors():
    errors = refusals(lambda: EDM2UNet(data_shape=(2,)),
                      lambda: EDM2UNet(channel_mult=(1, 2, 2, 2), data_shape=(1, 12, 12)),  # 12 does not halve 3 times
                      lambda: EDM2UNet(channels=16, num_heads=3, data_shape=(1, 8, 8)),
                      lambda: EDM2UNet(data_shape=(4, 8)))  # each one sentence
    assert errors[0] == "edm2 is an image network; use mlp for 2-D points."
    assert "12x12" in errors[1] and "multiples of 8" in errors[1]
    assert "num_heads 3" in errors[2]
    assert "(4, 8)" in errors[3]
