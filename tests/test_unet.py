"""The U-Net: shapes for every phase's images, conditioning, learned-variance output, options."""

import pytest
import torch

from ddpmctl import registry
from ddpmctl.errors import OptionsError
from ddpmctl.networks.unet import UNet, default_sizes
from ddpmctl.testing import wake

SMALL = {"channels": 8, "channel_mult": (1, 2), "attn_resolutions": (4,)}




def _inputs(shape, B=3, num_classes=0):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, *shape, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    y = torch.randint(0, num_classes, (B,), generator=g) if num_classes else None
    return x, t, y


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 16, 16), (1, 28, 28), (3, 32, 32), (3, 12, 12)])
@pytest.mark.parametrize("out_mult", [1, 2])
def test_output_has_the_shape_of_x_t_times_out_mult(shape, out_mult):
    net = UNet(channels=8, data_shape=shape, num_classes=0, out_mult=out_mult)
    x, t, _ = _inputs(shape)
    out = net(x, t)
    assert out.shape == (3, shape[0] * out_mult, *shape[1:])
    assert out.dtype == torch.float32


def test_defaults_follow_the_image_size():
    assert default_sizes((1, 16, 16))["channel_mult"] == (1, 2, 2)
    assert UNet(data_shape=(1, 16, 16)).sizes == {**default_sizes((1, 16, 16)), "attn_resolutions": (4,)}
    assert len(default_sizes((3, 32, 32))["channel_mult"]) == 4
    # An explicit option wins over the derived default.
    assert UNet(channels=8, num_res_blocks=2, data_shape=(1, 16, 16)).sizes["num_res_blocks"] == 2


def test_starts_as_the_identity_residual_and_trains():
    """Zero-initialised output: the untrained net predicts 0; one step moves it."""
    net = UNet(**SMALL, data_shape=(1, 8, 8))
    x, t, _ = _inputs((1, 8, 8))
    assert net(x, t).abs().max() == 0
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    loss = (net(x, t) - x).pow(2).mean()
    loss.backward()
    opt.step()
    assert net(x, t).abs().max() > 0


def test_time_reaches_the_output():
    net = wake(UNet(**SMALL, data_shape=(1, 8, 8)))
    x, _, _ = _inputs((1, 8, 8))
    a = net(x, torch.full((3,), 10))
    b = net(x, torch.full((3,), 900))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("cross_attention", [False, True])
def test_class_label_conditions_the_output_and_none_is_the_null_label(cross_attention):
    net = wake(UNet(**SMALL, cross_attention=cross_attention, data_shape=(1, 8, 8), num_classes=5))
    x, t, _ = _inputs((1, 8, 8))
    out_2 = net(x, t, torch.full((3,), 2))
    out_4 = net(x, t, torch.full((3,), 4))
    assert not torch.allclose(out_2, out_4)
    null = net(x, t, torch.full((3,), 5))  # index num_classes: the null label
    assert torch.allclose(net(x, t, None), null)
    # The rows of a batch are independent: a mixed batch equals the separate ones.
    mixed = net(x, t, torch.tensor([2, 4, 2]))
    assert torch.allclose(mixed[0], out_2[0], atol=1e-5) and torch.allclose(mixed[1], out_4[1], atol=1e-5)


def test_cross_attention_adds_label_tokens_only_when_conditional():
    with_cross = UNet(**SMALL, cross_attention=True, data_shape=(1, 8, 8), num_classes=3)
    uncond = UNet(**SMALL, cross_attention=True, data_shape=(1, 8, 8), num_classes=0)
    assert with_cross.context is not None and uncond.context is None
    assert sum(p.numel() for p in with_cross.parameters()) > sum(p.numel() for p in uncond.parameters())


def test_unconditional_net_ignores_labels():
    net = wake(UNet(**SMALL, data_shape=(1, 8, 8)))
    x, t, _ = _inputs((1, 8, 8))
    assert torch.equal(net(x, t), net(x, t, torch.zeros(3, dtype=torch.long)))


def test_built_through_the_registry_with_validated_options():
    registry.clear_cache()
    net = registry.build("network", "unet", {"channels": 8, "channel_mult": [1, 2]}, data_shape=(1, 8, 8), num_classes=10, out_mult=2)
    x, t, _ = _inputs((1, 8, 8))
    assert net(x, t, torch.zeros(3, dtype=torch.long)).shape == (3, 2, 8, 8)
    with pytest.raises(OptionsError, match="widht"):
        registry.validate_options("network", "unet", {"widht": 3})
    with pytest.raises(OptionsError, match="dropout"):
        registry.validate_options("network", "unet", {"dropout": 1.5})


def test_points_and_bad_heads_are_one_sentence_errors():
    with pytest.raises(OptionsError, match="mlp"):
        UNet(data_shape=(2,))
    with pytest.raises(OptionsError, match="num_heads"):
        UNet(channels=8, num_heads=3, data_shape=(1, 8, 8))
