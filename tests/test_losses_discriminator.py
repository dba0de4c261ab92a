"""The PatchGAN discriminator: architecture, released key layout, init, and the BatchNorm-free variant."""
import pytest
import torch
from torch import nn

from openmagvit2.losses import NLayerDiscriminator, build_discriminator, released_discriminator_state

# Key -> shape of the released `loss.discriminator.*` tensors (ndf 64, 3 layers), without the prefix.
RELEASED_SHAPES = {
    "main.0.weight": (64, 3, 4, 4), "main.0.bias": (64,),
    "main.2.weight": (128, 64, 4, 4),
    "main.3.weight": (128,), "main.3.bias": (128,), "main.3.running_mean": (128,), "main.3.running_var": (128,),
    "main.3.num_batches_tracked": (),
    "main.5.weight": (256, 128, 4, 4),
    "main.6.weight": (256,), "main.6.bias": (256,), "main.6.running_mean": (256,), "main.6.running_var": (256,),
    "main.6.num_batches_tracked": (),
    "main.8.weight": (512, 256, 4, 4),
    "main.9.weight": (512,), "main.9.bias": (512,), "main.9.running_mean": (512,), "main.9.running_var": (512,),
    "main.9.num_batches_tracked": (),
    "main.11.weight": (1, 512, 4, 4), "main.11.bias": (1,),
}


def expected_parameter_count(channels: int = 64) -> int:
    """Count from the architecture: 4x4 convs (bias only on the first and last), BN weight + bias."""
    widths = [3, channels, 2 * channels, 4 * channels, 8 * channels]
    convs = sum(16 * c_in * c_out for c_in, c_out in zip(widths, widths[1:])) + 16 * widths[-1]
    return convs + channels + 1 + 2 * sum(widths[2:])


def test_recipe_discriminator_matches_released_keys_and_parameter_count():
    disc = build_discriminator({})
    assert {k: tuple(v.shape) for k, v in disc.state_dict().items()} == RELEASED_SHAPES
    count = sum(p.numel() for p in disc.parameters())
    assert count == expected_parameter_count() == 2_765_633


@pytest.mark.parametrize("size, patches", [(256, 30), (128, 14), (64, 6)])
def test_output_is_one_logit_per_patch(size, patches):
    disc = NLayerDiscriminator(channels=8).eval()
    assert disc(torch.randn(2, 3, size, size)).shape == (2, 1, patches, patches)


def test_init_matches_reference_statistics():
    torch.manual_seed(0)
    disc = build_discriminator({})
    big_conv = disc.main[8].weight  # 2M samples of N(0, 0.02)
    assert abs(big_conv.mean().item()) < 1e-4
    assert big_conv.std().item() == pytest.approx(0.02, rel=0.01)
    bn_weights = torch.cat([disc.main[i].weight for i in (3, 6, 9)])
    assert bn_weights.mean().item() == pytest.approx(1.0, abs=0.005)
    assert bn_weights.std().item() == pytest.approx(0.02, rel=0.15)
    assert all(torch.count_nonzero(disc.main[i].bias) == 0 for i in (3, 6, 9))


def test_disc_norm_none_has_no_batchnorm_and_is_per_image():
    disc = build_discriminator({"disc_norm": "none", "disc_channels": 8, "disc_layers": 2})
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in disc.modules())
    assert all(isinstance(disc.main[i], nn.Identity) for i in (3, 6))
    # the convs before the (removed) norms get their bias back; indices of the other layers are unchanged
    assert disc.main[2].bias is not None and disc.main[5].bias is not None
    images = torch.randn(4, 3, 32, 32)
    together = disc.train()(images)
    alone = torch.cat([disc(images[:2]), disc(images[2:])])
    torch.testing.assert_close(together, alone)


def test_batchnorm_variant_depends_on_the_batch():
    """The reason `disc_norm=none` exists: in train mode BN logits of an image depend on its batch mates."""
    torch.manual_seed(0)
    disc = build_discriminator({"disc_channels": 8, "disc_layers": 2}).train()
    images = torch.randn(4, 3, 32, 32)
    assert not torch.allclose(disc(images)[:2], disc(images[:2]))


def test_released_state_loads_one_to_one():
    source = build_discriminator({})
    released = {"encoder.conv_in.weight": torch.zeros(1), "loss.perceptual_loss.lin0.model.1.weight": torch.zeros(1)}
    released.update({f"loss.discriminator.{k}": v.clone() for k, v in source.state_dict().items()})
    target = build_discriminator({})
    target.load_state_dict(released_discriminator_state(released))  # strict
    images = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(target.eval()(images), source.eval()(images))
    with pytest.raises(ValueError, match="no 'loss.discriminator"):
        released_discriminator_state({"encoder.conv_in.weight": torch.zeros(1)})
