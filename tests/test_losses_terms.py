"""GAN loss terms, LeCam EMA and the adaptive weight, against hand computations."""
import math

import pytest
import torch

from openmagvit2.losses import LeCamEMA, adaptive_generator_weight, adopt_weight, hinge_d_loss, non_saturating_g_loss


def as_logits(values):
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 2, 2)


def test_hinge_loss_by_hand():
    real = as_logits([0.5, 2.0, -1.0, 0.0])  # relu(1 - r) = 0.5, 0, 2, 1 -> mean 0.875
    fake = as_logits([0.5, -2.0, -0.5, 3.0])  # relu(1 + f) = 1.5, 0, 0.5, 4 -> mean 1.5
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.875 + 1.5))


def test_non_saturating_loss_averages_patches_per_image_first():
    logits = torch.tensor([[4.0, -2.0, 0.0, 2.0], [-3.0, -1.0, -1.0, 1.0]]).reshape(2, 1, 2, 2)
    per_image = [1.0, -1.0]
    expected = sum(math.log1p(math.exp(-m)) for m in per_image) / 2  # -log sigmoid(m)
    assert non_saturating_g_loss(logits).item() == pytest.approx(expected, rel=1e-6)
    per_patch = sum(math.log1p(math.exp(-v)) for v in logits.flatten().tolist()) / 8
    assert abs(per_patch - expected) > 0.1  # the two conventions really differ on these values


def test_adopt_weight_gates_before_start():
    assert [adopt_weight(step, 3) for step in (0, 2, 3, 10)] == [0.0, 0.0, 1.0, 1.0]


def test_lecam_ema_update_and_regularizer_by_hand():
    lecam = LeCamEMA(decay=0.9)
    assert lecam.ema_real.item() == 0.0 and lecam.ema_fake.item() == 0.0
    real = as_logits([1.0, 3.0, 2.0, 2.0])  # mean 2
    fake = as_logits([-1.0, -1.5, -0.5, -1.0])  # mean -1
    lecam.update(real, fake)
    assert lecam.ema_real.item() == pytest.approx(0.2) and lecam.ema_fake.item() == pytest.approx(-0.1)
    lecam.update(real, fake)
    assert lecam.ema_real.item() == pytest.approx(0.9 * 0.2 + 0.1 * 2) and \
        lecam.ema_fake.item() == pytest.approx(0.9 * -0.1 + 0.1 * -1)
    ema_real, ema_fake = 0.38, -0.19
    expected = (sum(max(0.0, r - ema_fake) ** 2 for r in real.flatten().tolist()) / 4
                + sum(max(0.0, ema_real - f) ** 2 for f in fake.flatten().tolist()) / 4)
    assert lecam.regularizer(real, fake).item() == pytest.approx(expected, rel=1e-6)


def test_lecam_regularizer_is_zero_when_real_below_fake_ema_and_fake_above_real_ema():
    lecam = LeCamEMA(decay=0.0)
    lecam.update(as_logits([-2.0] * 4), as_logits([2.0] * 4))  # ema_real -2, ema_fake 2
    assert lecam.regularizer(as_logits([1.0, 0.0, -1.0, 1.5]), as_logits([-1.0, 0.0, 1.0, -1.5])).item() == 0.0


def test_lecam_state_is_in_state_dict_and_rejects_bad_decay():
    lecam = LeCamEMA()
    lecam.update(as_logits([1.0] * 4), as_logits([-1.0] * 4))
    restored = LeCamEMA()
    restored.load_state_dict(lecam.state_dict())
    assert restored.ema_real.item() == pytest.approx(0.001) and restored.ema_fake.item() == pytest.approx(-0.001)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        LeCamEMA(decay=1.0)


def test_adaptive_weight_against_manual_autograd():
    torch.manual_seed(0)
    last_layer = torch.randn(3, 4, requires_grad=True)
    features = torch.randn(5, 4)
    output = features @ last_layer.t()
    nll = output.abs().mean()
    gen = torch.nn.functional.softplus(-output.mean(dim=1)).mean()
    weight = adaptive_generator_weight(nll, gen, last_layer, disc_weight=0.8)

    nll_grad = torch.autograd.grad((features @ last_layer.t()).abs().mean(), last_layer)[0]
    gen_grad = torch.autograd.grad(torch.nn.functional.softplus(-(features @ last_layer.t()).mean(dim=1)).mean(),
                                   last_layer)[0]
    expected = nll_grad.norm() / (gen_grad.norm() + 1e-4) * 0.8
    assert not weight.requires_grad
    torch.testing.assert_close(weight, expected)
    # the graph is retained for the caller's backward
    (nll + weight * gen).backward()
    torch.testing.assert_close(last_layer.grad, nll_grad + expected * gen_grad)


def test_adaptive_weight_is_clamped_when_the_gan_gradient_vanishes():
    last_layer = torch.full((2, 2), 3.0, requires_grad=True)
    nll = (last_layer**2).sum()  # gradient 6 everywhere: norm 12
    gen = (last_layer * 0.0).sum()  # zero gradient: ratio 12 / 1e-4 > 1e4
    assert adaptive_generator_weight(nll, gen, last_layer, disc_weight=0.5).item() == pytest.approx(1e4 * 0.5)
