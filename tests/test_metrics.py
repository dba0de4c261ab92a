"""Metric definitions against their references: scikit-image (PSNR, SSIM), clean-fid (FID), lpips, exact counts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TinyFeatures
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from openmagvit2.eval import required_weights, resolve_metrics
from openmagvit2.eval.batch import EvalBatch
from openmagvit2.eval.fid import FID, prepare_for_inception
from openmagvit2.eval.frechet import FeatureStatistics
from openmagvit2.eval.images import to_uint8
from openmagvit2.eval.perceptual import LPIPS
from openmagvit2.eval.pixel import PSNR, SSIM, psnr_per_image, ssim_per_image
from openmagvit2.eval.usage import CodebookUsage


def random_pair(seed: int, b: int = 3, size: int = 24, noise: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth-ish images in [-1, 1] and noisy versions of them (so metrics land in a realistic range)."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(b, 3, size // 4, size // 4, generator=generator) * 2 - 1,
                                           size=(size, size), mode="bilinear", align_corners=False)
    noisy = (base + noise * torch.randn(b, 3, size, size, generator=generator)).clamp(-1, 1)
    return base, noisy


def hwc(images_uint8: torch.Tensor, i: int) -> np.ndarray:
    return images_uint8[i].permute(1, 2, 0).numpy()


def test_to_uint8_rounds_or_truncates_like_a_png_cast():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 1.5]).view(1, 1, 1, 6)
    assert to_uint8(x, "round").flatten().tolist() == [0, 0, 128, 191, 255, 255]
    assert to_uint8(x, "truncate").flatten().tolist() == [0, 0, 127, 191, 255, 255]
    with pytest.raises(ValueError, match="round"):
        to_uint8(x, "nearest")


def test_psnr_matches_scikit_image_per_image():
    images, recons = random_pair(0)
    a, b = to_uint8(images), to_uint8(recons)
    ours = psnr_per_image(a, b)
    expected = [peak_signal_noise_ratio(hwc(a, i), hwc(b, i), data_range=255) for i in range(a.shape[0])]
    assert ours.tolist() == pytest.approx(expected, abs=1e-10)
    assert 10 < min(expected) < 40  # a realistic range, so the comparison means something


def test_ssim_matches_scikit_image_within_1e4():
    images, recons = random_pair(1, size=32)
    a, b = to_uint8(images), to_uint8(recons)
    ours = ssim_per_image(a, b)
    expected = [structural_similarity(hwc(a, i), hwc(b, i), data_range=255, channel_axis=-1)
                for i in range(a.shape[0])]
    assert np.max(np.abs(ours.numpy() - np.array(expected))) < 1e-4
    assert 0.05 < min(expected) < 0.99
    assert ssim_per_image(a, a).tolist() == pytest.approx([1.0] * a.shape[0], abs=1e-12)


def test_ssim_refuses_images_smaller_than_its_window():
    tiny = torch.zeros(1, 3, 6, 6, dtype=torch.uint8)
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim_per_image(tiny, tiny)


def test_psnr_and_ssim_accumulate_means_over_batches():
    psnr, ssim = PSNR(torch.device("cpu")), SSIM(torch.device("cpu"))
    all_psnr, all_ssim = [], []
    for seed, b in ((2, 3), (3, 5)):  # unequal batches: a mean of batch means would differ
        images, recons = random_pair(seed, b=b)
        batch = EvalBatch(images, recons, torch.zeros(b, 2, 2, dtype=torch.long))
        psnr.update(batch)
        ssim.update(batch)
        all_psnr += psnr_per_image(batch.images_uint8, batch.reconstructions_uint8).tolist()
        all_ssim += ssim_per_image(batch.images_uint8, batch.reconstructions_uint8).tolist()
    assert psnr.compute()["psnr"] == pytest.approx(np.mean(all_psnr), rel=1e-12)
    assert ssim.compute()["ssim"] == pytest.approx(np.mean(all_ssim), rel=1e-12)


def test_psnr_of_an_exact_reconstruction_is_finite():
    images, _ = random_pair(4)
    assert torch.isfinite(psnr_per_image(to_uint8(images), to_uint8(images))).all()


def test_codebook_usage_counts_are_exact():
    usage = CodebookUsage(16, torch.device("cpu"))
    first = torch.tensor([[[0, 1], [1, 5]]])
    second = torch.tensor([[[5, 5], [15, 1]], [[0, 0], [0, 0]]])
    for indices in (first, second):
        usage.update(EvalBatch(torch.zeros(indices.shape[0], 3, 8, 8), torch.zeros(indices.shape[0], 3, 8, 8),
                               indices))
    expected = np.bincount(torch.cat([first.flatten(), second.flatten()]).numpy(), minlength=16)
    assert usage.counts.tolist() == expected.tolist()
    result = usage.compute()
    p = expected[expected > 0] / expected.sum()
    assert result["usage"] == 4 / 16
    assert result["codes_used"] == 4
    assert result["perplexity"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-12)


def test_codebook_usage_perplexity_of_uniform_use_is_the_codebook_size():
    usage = CodebookUsage(8, torch.device("cpu"))
    usage.update(EvalBatch(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), torch.arange(8).view(1, 2, 4)))
    assert usage.compute() == {"usage": 1.0, "codes_used": 8.0, "perplexity": pytest.approx(8.0)}


def test_codebook_usage_refuses_ids_outside_the_codebook():
    usage = CodebookUsage(4, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"span \[4, 4\], outside the codebook of 4"):
        usage.update(EvalBatch(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), torch.tensor([[[4]]])))
    with pytest.raises(ValueError, match=r"span \[-1, 2\]"):
        usage.update(EvalBatch(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), torch.tensor([[[-1, 2]]])))
    assert usage.counts.sum() == 0


def test_streaming_feature_statistics_equal_numpy_mean_and_cov():
    features = torch.randn(40, 6, generator=torch.Generator().manual_seed(0)) * 3 + 1
    stats = FeatureStatistics(6, torch.device("cpu"))
    for chunk in features.split(7):
        stats.update(chunk)
    mean, cov = stats.mean_and_covariance()
    np.testing.assert_allclose(mean, features.double().numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(features.double().numpy(), rowvar=False), rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")  # clean-fid's call into scipy
@pytest.mark.parametrize("mode", ["clean", "legacy_pytorch"])
def test_fid_of_identical_sets_is_zero_and_of_different_sets_matches_cleanfid(mode):
    from cleanfid.fid import fid_from_feats

    extractor = TinyFeatures()
    images, recons = random_pair(5, b=24, size=16, noise=0.5)
    same = FID(torch.device("cpu"), mode, extractor=extractor, feature_dim=8)
    differ = FID(torch.device("cpu"), mode, extractor=extractor, feature_dim=8)
    for i in (0, 12):  # two batches
        same.update(EvalBatch(images[i:i + 12], images[i:i + 12], torch.zeros(1)))
        differ.update(EvalBatch(images[i:i + 12], recons[i:i + 12], torch.zeros(1)))
    assert abs(same.compute()["rfid"]) < 1e-6
    with torch.no_grad():
        real = extractor(prepare_for_inception(images, mode)).double().numpy()
        fake = extractor(prepare_for_inception(recons, mode)).double().numpy()
    expected = fid_from_feats(real, fake)
    assert expected > 1e-3
    assert differ.compute()["rfid"] == pytest.approx(expected, rel=1e-6)  # our float64 sums vs clean-fid's np.cov


def test_inception_inputs_follow_cleanfid_resizers():
    from cleanfid.resize import build_resizer

    images, _ = random_pair(6, b=2, size=16)
    pixels = to_uint8(images).permute(0, 2, 3, 1).numpy()
    clean = prepare_for_inception(images, "clean")
    expected = np.stack([build_resizer("clean")(image) for image in pixels]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(clean.numpy(), expected, rtol=0, atol=1e-5)
    # legacy_pytorch: clean-fid's PyTorch bilinear resizer, here on the unquantised pixels (as pytorch-fid is fed)
    legacy = prepare_for_inception(images, "legacy_pytorch")
    float_pixels = ((images + 1) * 127.5).permute(0, 2, 3, 1).numpy()
    expected = np.stack([build_resizer("legacy_pytorch")(image) for image in float_pixels]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(legacy.numpy(), expected, rtol=0, atol=1e-3)
    assert clean.shape == legacy.shape == (2, 3, 299, 299)


@pytest.mark.filterwarnings("ignore::UserWarning")  # lpips passes torchvision's deprecated `pretrained` argument
def test_lpips_metric_averages_the_lpips_package_per_image():
    import lpips

    torch.manual_seed(0)
    network = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()  # random trunk: no download
    images, recons = random_pair(7, b=4, size=32)
    metric = LPIPS("lpips_alex", torch.device("cpu"), network=network)
    with torch.no_grad():
        metric.update(EvalBatch(images[:3], recons[:3], torch.zeros(1)))
        metric.update(EvalBatch(images[3:], recons[3:], torch.zeros(1)))
        expected = network(recons, images).mean().item()
    assert metric.compute()["lpips_alex"] == pytest.approx(expected, rel=1e-6)
    assert expected > 0


def test_metric_selection_expands_aliases_and_names_the_weights_it_needs():
    assert resolve_metrics(["psnr", "lpips", "usage", "psnr"]) == ["psnr", "lpips_alex", "lpips_vgg", "usage"]
    assert required_weights(["psnr", "ssim", "usage"]) == []
    assert required_weights(["rfid", "lpips"]) == ["inception_clean", "lpips_alex", "lpips_vgg"]
    assert required_weights(["rfid"], fid_mode="legacy_pytorch") == ["inception_legacy"]
    with pytest.raises(ValueError, match="unknown metric 'fidd'"):
        resolve_metrics(["fidd"])
    with pytest.raises(ValueError, match="fid_mode"):
        required_weights(["rfid"], fid_mode="tensorflow")
