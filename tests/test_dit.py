"""DiT: shapes, adaLN-Zero's start as a zero output, conditioning, options, errors, and one step of
the EDM training loss."""

import pytest
import torch
from torch import nn

from ddpmctl import registry
from ddpmctl.errors import OptionsError
from ddpmctl.networks.dit import DiT, sincos_2d
from ddpmctl.processes import EDM
from ddpmctl.testing import refusals, wake

SMALL = {"width": 32, "depth": 2, "heads": 4}


def _inputs(shape, B=3, num_classes=0, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, *shape, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g).float()
    y = torch.randint(0, num_classes, (B,), generator=g) if num_classes else None
    return x, t, y


def _train(net: nn.Module, x, t, y=None, steps: int = 5) -> nn.Module:
    """A few Adam steps towards an output that depends on x and t, so both must reach it."""
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    goal = x.repeat(1, net.out_mult, 1, 1) * (t / 1000)[:, None, None, None]
    for _ in range(steps):
        opt.zero_grad()
        (net(x, t, y) - goal).pow(2).mean().backward()
        opt.step()
    return net.eval()


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 8, 8), (1, 8, 12), (2, 4, 16)])
@pytest.mark.parametrize("out_mult", [1, 2])
def test_output_has_the_shape_of_x_t_times_out_mult(shape, out_mult):
    net = DiT(**SMALL, data_shape=shape, num_classes=0, out_mult=out_mult)
    x, t, _ = _inputs(shape)
    out = net(x, t)
    assert out.shape == (3, shape[0] * out_mult, *shape[1:])
    assert out.dtype == torch.float32


def test_tokens_go_back_to_their_patches():
    """At the start every block is the identity, so with a random output linear each output patch
    is a function of its own input patch only: a pixel changes its patch and nothing else."""
    net = DiT(**SMALL, patch_size=2, data_shape=(3, 8, 12))
    x, t, _ = _inputs((3, 8, 12))
    h = torch.randn(3, 24, 32)
    assert torch.equal(net.blocks[0](h, torch.randn(3, 32)), h)  # adaLN-Zero: alpha = 0
    with torch.no_grad():
        net.final.linear.weight.normal_()
    x2 = x.clone()
    x2[:, 1, 5, 6] += 1.0  # row 5, column 6: the patch of rows 4-5, columns 6-7
    changed = (net(x2, t) - net(x, t)).abs().amax(dim=(0, 1)) > 0  # (H, W)
    expected = torch.zeros(8, 12, dtype=torch.bool)
    expected[4:6, 6:8] = True
    assert torch.equal(changed, expected)


def test_positions_are_fixed_sin_cos_of_the_grid():
    pos = sincos_2d(16, 2, 3)
    assert pos.shape == (6, 16) and len({tuple(r) for r in pos.tolist()}) == 6  # one code per position
    assert torch.allclose(pos[0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))  # (0, 0)
    assert torch.equal(pos[1, :8], pos[0, :8]) and not torch.equal(pos[1, 8:], pos[0, 8:])  # same row, next column
    net = DiT(**SMALL, patch_size=2, data_shape=(1, 8, 12))
    assert torch.equal(net.pos, sincos_2d(32, 4, 6))
    assert "pos" not in net.state_dict() and not any(p is net.pos for p in net.parameters())
    # The positions are what tells equal patches apart: a blank image gives a different output per patch.
    with torch.no_grad():
        net.final.linear.weight.normal_()
    out = net(torch.zeros(1, 1, 8, 12), torch.zeros(1))[0, 0]  # (H, W)
    patches = {tuple(out[i:i + 2, j:j + 2].flatten().tolist()) for i in range(0, 8, 2) for j in range(0, 12, 2)}
    assert len(patches) == 24


def test_starts_as_a_zero_output_and_trains():
    """adaLN-Zero and a zero output layer: the untrained net outputs exactly 0 for any input;
    a few steps make the output depend on x_t."""
    net = DiT(**SMALL, data_shape=(1, 8, 8))
    x, t, _ = _inputs((1, 8, 8))
    other, _, _ = _inputs((1, 8, 8), seed=2)
    assert net(x, t).abs().max() == 0 and net(other, t).abs().max() == 0
    _train(net, x, t)
    assert not torch.allclose(net(x, t), net(other, t))


def test_noise_level_reaches_the_output_after_training():
    net = _train(DiT(**SMALL, data_shape=(1, 8, 8)), *_inputs((1, 8, 8))[:2])
    x, _, _ = _inputs((1, 8, 8))
    assert not torch.allclose(net(x, torch.full((3,), 10.0)), net(x, torch.full((3,), 900.0)))


def test_unconditional_net_ignores_labels():
    net = wake(DiT(**SMALL, data_shape=(1, 8, 8)))
    x, t, _ = _inputs((1, 8, 8))
    assert torch.equal(net(x, t), net(x, t, torch.zeros(3, dtype=torch.long)))


def test_long_skips_start_as_the_plain_network():
    """U-ViT's skip projection starts as [I, 0]: a net with long skips computes what the same
    weights compute without them, until training moves the projection."""
    plain = wake(DiT(**{**SMALL, "depth": 4}, data_shape=(1, 8, 8)))
    skip = DiT(**{**SMALL, "depth": 4}, long_skips=True, data_shape=(1, 8, 8)).eval()
    missing, _ = skip.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["skips.0.bias", "skips.0.weight", "skips.1.bias", "skips.1.weight"]
    x, t, _ = _inputs((1, 8, 8))
    assert torch.allclose(skip(x, t), plain(x, t), atol=1e-6)
    with torch.no_grad():
        skip.skips[0].weight[:, 32:].normal_()
    assert not torch.allclose(skip(x, t), plain(x, t), atol=1e-3)


def test_two_noise_inputs_start_as_the_one_input_net():
    """noise_inputs=2 (t, and a gap t - r): t is (B, 2); the second level's MLP starts at zero."""
    one = wake(DiT(**SMALL, data_shape=(1, 8, 8)))
    two = DiT(**SMALL, data_shape=(1, 8, 8), noise_inputs=2).eval()
    missing, _ = two.load_state_dict(one.state_dict(), strict=False)
    assert missing and all(k.startswith("embed.mlp2.") for k in missing)
    x, t, _ = _inputs((1, 8, 8))
    t2 = torch.stack([t, torch.rand(3) * 500], dim=1)  # (B, 2)
    assert torch.allclose(two(x, t2), one(x, t), atol=1e-6)
    wake(two)  # now the gap reaches the output too
    assert not torch.allclose(two(x, t2), two(x, torch.stack([t, torch.zeros(3)], dim=1)))


def test_built_through_the_registry_with_validated_options():
    registry.clear_cache()
    net = registry.build("network", "dit", {"width": 32, "depth": 2}, data_shape=(1, 8, 8), num_classes=0)
    assert isinstance(net, DiT) and len(net.blocks) == 2
    double = registry.build("network", "dit", {"width": 32, "depth": 1}, data_shape=(1, 8, 8), num_classes=10, out_mult=2)
    x, t, _ = _inputs((1, 8, 8))
    assert double(x, t, torch.zeros(3, dtype=torch.long)).shape == (3, 2, 8, 8)
    assert registry.validate_options("network", "dit", {}).patch_size == 2
    with pytest.raises(OptionsError, match="widht"):
        registry.validate_options("network", "dit", {"widht": 32})
    with pytest.raises(OptionsError, match="dropout"):
        registry.validate_options("network", "dit", {"dropout": 1.5})
    with pytest.raises(OptionsError, match="heads 3 does not divide width 32"):  # before any data is loaded
        registry.validate_options("network", "dit", {"width": 32, "heads": 3})


def test_points_patches_and_heads_are_one_sentence_errors():
    errors = refusals(lambda: DiT(data_shape=(2,)),
                      lambda: DiT(patch_size=3, data_shape=(1, 8, 8)),
                      lambda: DiT(width=32, heads=3, data_shape=(1, 8, 8)),
                      lambda: DiT(width=30, heads=2, data_shape=(1, 8, 8)))  # each one sentence
    assert errors[0] == "dit is an image network; use mlp for 2-D points."
    assert "patch_size 3" in errors[1] and "divisor of 8" in errors[1]
    assert "heads 3" in errors[2] and "width 32" in errors[2]
    assert "multiple of 4" in errors[3]


def test_one_step_of_the_edm_loss():
    """Inside the training objective: the EDM loss of a class-conditional DiT (with label dropout)
    is finite, its gradient reaches every parameter after a step, and it falls on a fixed batch."""
    torch.manual_seed(0)
    net = registry.build("network", "dit", SMALL, data_shape=(1, 8, 8), num_classes=3)
    loss_fn = EDM(sigma_data=0.5).loss(p_uncond=0.2, num_classes=3)
    x0 = torch.rand(16, 1, 8, 8) * 2 - 1
    y = torch.arange(16) % 3
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = loss_fn(net, x0, y, torch.Generator().manual_seed(0))  # the same levels and noise each step
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize("name, options", [("dit", {"width": 32, "depth": 2, "heads": 2}), ("dit", {"width": 32, "depth": 2, "heads": 2, "long_skips": True}), ("unet", {"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4]})])
def test_image_networks_keep_the_plugin_contract(name, options):
    from ddpmctl.testing import check_network_contract

    check_network_contract(name, options, data_shape=(1, 8, 8))
