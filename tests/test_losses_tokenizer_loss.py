"""TokenizerLoss: the generator and discriminator objectives, against hand computations on tiny tensors."""
import math
import sys
import types
from typing import NamedTuple

import pytest
import torch
from torch import nn

from openmagvit2.losses import TokenizerLoss, build_perceptual_loss

NO_LPIPS = {"perceptual_weight": 0.0}


class QuantizerOut(NamedTuple):
    entropy_loss: torch.Tensor
    per_sample_entropy: torch.Tensor
    codebook_entropy: torch.Tensor
    commitment: torch.Tensor


def quantizer_out(entropy=0.7, commitment=0.3):
    return QuantizerOut(torch.tensor(entropy), torch.tensor(2.0), torch.tensor(2.0 - entropy), torch.tensor(commitment))


class ChannelLogits(nn.Module):
    """A transparent 'discriminator': the first channel times a scale is the patch logit map (`b 1 h w`)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))
        self.batch_sizes: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(images.shape[0])
        return images[:, :1] * self.scale


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def images_pair(seed: int = 0, size: int = 4):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, size, size, generator=generator) * 2 - 1
    reconstruction = (torch.rand(2, 3, size, size, generator=generator) * 2 - 1).requires_grad_()
    return images, reconstruction


def test_generator_loss_by_hand():
    loss = TokenizerLoss(NO_LPIPS)
    images, reconstruction = images_pair()
    total, logs = loss.generator_loss(images, reconstruction, quantizer_out(0.7, 0.3), ChannelLogits(2.0), step=0)
    l1 = (images - reconstruction).abs().mean().item()
    per_image = (2.0 * reconstruction[:, 0]).mean(dim=(1, 2)).tolist()
    gen = sum(softplus(-m) for m in per_image) / 2
    assert logs["loss/l1"].item() == pytest.approx(l1)
    assert logs["loss/gen"].item() == pytest.approx(gen, rel=1e-6)
    assert logs["gen_weight"].item() == pytest.approx(0.1)
    assert total.item() == pytest.approx(l1 + 0.1 * gen + 0.1 * 0.7 + 0.25 * 0.3, rel=1e-6)
    assert set(logs) == {"loss/l1", "loss/perceptual", "loss/nll", "loss/gen", "loss/entropy", "loss/commitment",
                         "loss/g_total", "gen_weight", "entropy/per_sample", "entropy/codebook"}
    assert all(v.ndim == 0 and not v.requires_grad for v in logs.values())
    assert logs["loss/perceptual"].item() == 0.0 and logs["entropy/codebook"].item() == pytest.approx(1.3)
    assert loss.perceptual_loss is None


@pytest.mark.parametrize("step, scale", [(0, 4.0), (1000, 2.5), (2000, 1.0), (5000, 1.0)])
def test_codebook_enlarge_decays_linearly(step, scale):
    plain = TokenizerLoss(NO_LPIPS)
    enlarged = TokenizerLoss({**NO_LPIPS, "codebook_enlarge_ratio": 3.0, "codebook_enlarge_steps": 2000})
    images, reconstruction = images_pair()
    args = (images, reconstruction, quantizer_out(0.7, 0.3), ChannelLogits())
    base, _ = plain.generator_loss(*args, step=step)
    total, _ = enlarged.generator_loss(*args, step=step)
    assert enlarged.codebook_scale(step) == pytest.approx(scale)
    assert (total - base).item() == pytest.approx(0.1 * 0.7 * (scale - 1.0), abs=1e-6)


def test_disc_start_gates_the_generator_adversarial_term():
    loss = TokenizerLoss({**NO_LPIPS, "disc_start": 5})
    images, reconstruction = images_pair()
    disc = ChannelLogits(3.0)
    before, logs_before = loss.generator_loss(images, reconstruction, quantizer_out(), disc, step=4)
    after, logs_after = loss.generator_loss(images, reconstruction, quantizer_out(), disc, step=5)
    nll_and_codes = logs_before["loss/l1"] + 0.1 * 0.7 + 0.25 * 0.3
    assert before.item() == pytest.approx(nll_and_codes.item())
    assert logs_before["gen_weight"].item() == 0.0 and logs_after["gen_weight"].item() == pytest.approx(0.1)
    assert logs_before["loss/gen"].item() == pytest.approx(logs_after["loss/gen"].item())  # still logged
    assert after.item() == pytest.approx((nll_and_codes + 0.1 * logs_after["loss/gen"]).item())
    before.backward()
    assert disc.scale.grad is None  # no backward through D before disc_start
    l1_only = torch.sign(reconstruction - images) / images.numel()
    torch.testing.assert_close(reconstruction.grad, l1_only)


def make_decoder_output(seed: int = 0):
    """A linear 'decoder' whose weight plays the role of the decoder's conv_out weight."""
    torch.manual_seed(seed)
    conv_out = nn.Conv2d(4, 3, 1, bias=False)
    latent = torch.randn(2, 4, 4, 4)
    images = torch.rand(2, 3, 4, 4) * 2 - 1
    return conv_out, latent, images


def test_adaptive_generator_weight_against_manual_autograd():
    loss = TokenizerLoss({**NO_LPIPS, "gen_loss_weight": None, "disc_weight": 0.8})
    conv_out, latent, images = make_decoder_output()
    disc = ChannelLogits(1.5).requires_grad_(False)
    total, logs = loss.generator_loss(images, conv_out(latent), quantizer_out(), disc, step=0,
                                      last_layer=conv_out.weight)

    def nll_and_gen():
        reconstruction = conv_out(latent)
        nll = (images - reconstruction).abs().mean()
        gen = nn.functional.softplus(-(1.5 * reconstruction[:, 0]).mean(dim=(1, 2))).mean()
        return nll, gen

    nll_grad = torch.autograd.grad(nll_and_gen()[0], conv_out.weight)[0]
    gen_grad = torch.autograd.grad(nll_and_gen()[1], conv_out.weight)[0]
    weight = (nll_grad.norm() / (gen_grad.norm() + 1e-4)).item() * 0.8
    assert logs["gen_weight"].item() == pytest.approx(weight, rel=1e-5)
    assert 0.0 < weight < 1e4
    total.backward()
    torch.testing.assert_close(conv_out.weight.grad, nll_grad + weight * gen_grad)


def test_adaptive_weight_needs_last_layer_and_is_zero_without_autograd():
    loss = TokenizerLoss({**NO_LPIPS, "gen_loss_weight": None})
    conv_out, latent, images = make_decoder_output()
    with pytest.raises(ValueError, match="needs last_layer"):
        loss.generator_loss(images, conv_out(latent), quantizer_out(), ChannelLogits(), step=0)
    with torch.no_grad():
        total, logs = loss.generator_loss(images, conv_out(latent), quantizer_out(), ChannelLogits(), step=0,
                                          last_layer=conv_out.weight)
    assert logs["gen_weight"].item() == 0.0
    assert total.item() == pytest.approx((logs["loss/l1"] + 0.1 * 0.7 + 0.25 * 0.3).item())


def test_discriminator_loss_by_hand_updates_lecam_before_the_regulariser():
    loss = TokenizerLoss({**NO_LPIPS, "lecam_decay": 0.9, "lecam_weight": 0.5})
    images, reconstruction = images_pair()
    disc = ChannelLogits(1.0)
    total, logs = loss.discriminator_loss(images, reconstruction, disc, step=0)
    assert disc.batch_sizes == [2, 2]  # real and fake in two separate forwards, as the reference (BatchNorm)
    real, fake = images[:, :1].flatten().tolist(), reconstruction[:, :1].detach().flatten().tolist()
    ema_real, ema_fake = 0.1 * sum(real) / len(real), 0.1 * sum(fake) / len(fake)  # EMA updated first
    hinge = 0.5 * (sum(max(0.0, 1 - r) for r in real) / len(real) + sum(max(0.0, 1 + f) for f in fake) / len(fake))
    lecam = (sum(max(0.0, r - ema_fake) ** 2 for r in real) / len(real)
             + sum(max(0.0, ema_real - f) ** 2 for f in fake) / len(fake))
    assert loss.lecam.ema_real.item() == pytest.approx(ema_real, rel=1e-5)
    assert loss.lecam.ema_fake.item() == pytest.approx(ema_fake, rel=1e-5)
    assert logs["loss/hinge"].item() == pytest.approx(hinge, rel=1e-6)
    assert logs["loss/lecam"].item() == pytest.approx(lecam, rel=1e-5)
    assert total.item() == pytest.approx(hinge + 0.5 * lecam, rel=1e-5)
    assert logs["logits/real"].item() == pytest.approx(sum(real) / len(real), rel=1e-5)
    assert {"loss/d_total", "loss/hinge", "loss/lecam", "logits/real", "logits/fake"} <= set(logs)
    total.backward()
    assert reconstruction.grad is None  # D sees detached inputs
    assert disc.scale.grad is not None and disc.scale.grad.item() != 0.0
    # the logged EMA is a snapshot, not a view of the buffer
    loss.discriminator_loss(images, reconstruction, disc, step=1)
    assert logs["lecam/ema_real"].item() == pytest.approx(ema_real, rel=1e-5)


def test_disc_start_gates_the_discriminator_but_lecam_ema_still_moves():
    loss = TokenizerLoss({**NO_LPIPS, "disc_start": 10, "lecam_decay": 0.5})
    images, reconstruction = images_pair()
    disc = ChannelLogits(1.0)
    total, logs = loss.discriminator_loss(images, reconstruction, disc, step=3)
    assert total.item() == 0.0 and logs["loss/hinge"].item() > 0.0
    assert loss.lecam.ema_real.item() == pytest.approx(0.5 * images[:, :1].mean().item(), rel=1e-5)
    total.backward()  # still in the graph, as a DDP-wrapped discriminator needs
    assert disc.scale.grad.item() == 0.0


def test_state_dict_holds_the_lecam_state_only():
    loss = TokenizerLoss(NO_LPIPS)
    images, reconstruction = images_pair()
    loss.discriminator_loss(images, reconstruction, ChannelLogits(), step=0)
    state = loss.state_dict()
    assert set(state) == {"lecam.ema_real", "lecam.ema_fake"}
    restored = TokenizerLoss(NO_LPIPS)
    restored.load_state_dict(state)
    assert restored.lecam.ema_real.item() == pytest.approx(loss.lecam.ema_real.item())
    assert restored.lecam.ema_real.item() != 0.0


@pytest.fixture(scope="module")
def random_lpips():
    """LPIPS heads on a randomly initialised VGG16: the ImageNet backbone is not downloadable here."""
    torch.manual_seed(0)
    return build_perceptual_loss(pretrained_backbone=False)


def test_perceptual_term_is_lpips_of_the_pair(random_lpips):
    loss = TokenizerLoss({"perceptual_weight": 0.5}, perceptual=random_lpips)
    images, reconstruction = images_pair(size=32)
    total, logs = loss.generator_loss(images, reconstruction, quantizer_out(0.0, 0.0), ChannelLogits(), step=0)
    expected = random_lpips(images, reconstruction).mean()
    assert expected.item() > 0.0
    assert logs["loss/perceptual"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["loss/nll"].item() == pytest.approx(logs["loss/l1"].item() + 0.5 * expected.item(), rel=1e-5)
    total.backward()
    assert reconstruction.grad.abs().sum().item() > 0.0
    assert all(p.grad is None and not p.requires_grad for p in random_lpips.parameters())


def test_lpips_stays_frozen_and_out_of_checkpoints(random_lpips):
    loss = TokenizerLoss({}, perceptual=random_lpips)
    loss.train()
    assert loss.training and not random_lpips.training
    assert set(loss.state_dict()) == {"lecam.ema_real", "lecam.ema_fake"}
    nested = nn.ModuleDict({"loss": loss})
    assert set(nested.state_dict()) == {"loss.lecam.ema_real", "loss.lecam.ema_fake"}
    before = {k: v.clone() for k, v in random_lpips.state_dict().items()}
    nested.load_state_dict(nested.state_dict())  # strict: the LPIPS keys are not reported missing
    assert all(torch.equal(before[k], v) for k, v in random_lpips.state_dict().items())


def test_pretrained_lpips_asks_for_the_weights_first(monkeypatch):
    class MissingWeightsError(FileNotFoundError):
        pass

    asked = []

    def require(names):
        asked.append(list(names))
        raise MissingWeightsError("vgg16-397923af.pth is missing: put it in ~/.cache/torch/hub/checkpoints/")

    monkeypatch.setitem(sys.modules, "openmagvit2.weights", types.SimpleNamespace(require=require))
    with pytest.raises(MissingWeightsError, match="vgg16"):
        TokenizerLoss({"perceptual_weight": 1.0})
    assert asked == [["lpips_vgg"]]
    TokenizerLoss(NO_LPIPS)  # no perceptual loss, no weights needed
    assert asked == [["lpips_vgg"]]


def test_missing_vgg16_is_named_with_its_destination(monkeypatch, tmp_path):
    """With the real `openmagvit2.weights` and an empty torch hub cache, the error names the file and its path."""
    from openmagvit2.weights import MissingWeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth") as error:
        TokenizerLoss({"perceptual_weight": 1.0})
    assert str(tmp_path / "hub" / "checkpoints") in str(error.value)
