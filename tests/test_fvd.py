"""rFVD and clips in the evaluation framework: the I3D layout of VideoGPT's file, its loading, the FVD protocol and
contract (sums over ranks), per-frame metrics on clips. Random-initialised networks and tiny clips, CPU."""
from __future__ import annotations

import functools
import math
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from openmagvit2 import VideoTokenizer, weights
from openmagvit2.eval import check_metrics_apply, evaluate, required_weights, resolve_metrics
from openmagvit2.eval.batch import EvalBatch
from openmagvit2.eval.fvd import FVD, prepare_for_i3d
from openmagvit2.eval.i3d import InceptionI3d, build_i3d, load_i3d, pad_same
from openmagvit2.eval.images import to_uint8
from openmagvit2.eval.pixel import PSNR, psnr_per_image, ssim_per_image
from openmagvit2.io.checksum import file_sha256
from openmagvit2.io.safe_load import CheckpointError
from openmagvit2.models import video_model_preset
from test_eval import random_lpips  # LPIPS with a random trunk, built once

I3D_FILE = "i3d_pretrained_400.pt"


class TinyClipFeatures(torch.nn.Module):
    """A stand-in for I3D: `b 3 t 224 224` in [-1, 1] -> `b 8` (coarse means of x and x^2, mixed by a fixed map)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.mix = torch.randn(2 * 3 * 2 * 2 * 2, 8, generator=torch.Generator().manual_seed(seed))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        assert clips.shape[1:2] == (3,) and clips.shape[-2:] == (224, 224)
        assert -1.0 <= clips.min() and clips.max() <= 1.0
        pooled = [F.adaptive_avg_pool3d(x, (2, 2, 2)).flatten(1) for x in (clips, clips.square())]
        return torch.tanh(torch.cat(pooled, dim=1) @ self.mix)


def smooth_clips(seed: int, b: int = 4, t: int = 5, size: int = 32) -> torch.Tensor:
    """Clips `b 3 t size size` in [-1, 1] with some spatial structure."""
    low = torch.rand(b * t, 3, size // 4, size // 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    frames = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return frames.view(b, t, 3, size, size).transpose(1, 2).contiguous()


def noisy(clips: torch.Tensor, std: float, seed: int = 99) -> torch.Tensor:
    noise = torch.randn(clips.shape, generator=torch.Generator().manual_seed(seed))
    return (clips + std * noise).clamp(-1, 1)


@functools.lru_cache(maxsize=1)
def tiny_video_tokenizer() -> VideoTokenizer:
    torch.manual_seed(0)
    return VideoTokenizer(**video_model_preset("video_tiny")).eval()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME (so the hub checkpoint dir is under tmp), no network, and a cold I3D cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_network(*args, **kwargs):
        raise AssertionError("the test tried to download a file")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    build_i3d.cache_clear()
    yield tmp_path / "torch_home" / "hub" / "checkpoints"
    build_i3d.cache_clear()


# --- I3D: the layout of VideoGPT's i3d_pretrained_400.pt ----------------------------------------------------------

# (key, shape) read off the reference `pytorch_i3d.py` (VideoGPT, InceptionI3d(400, in_channels=3))
REFERENCE_KEYS = {
    "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
    "Conv3d_1a_7x7.bn.weight": (64,),
    "Conv3d_1a_7x7.bn.running_mean": (64,),
    "Conv3d_2b_1x1.conv3d.weight": (64, 64, 1, 1, 1),
    "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
    "Conv3d_2c_3x3.bn.running_var": (192,),
    "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
    "Mixed_3b.b1a.conv3d.weight": (96, 192, 1, 1, 1),
    "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
    "Mixed_3b.b2b.conv3d.weight": (32, 16, 3, 3, 3),
    "Mixed_3b.b3b.conv3d.weight": (32, 192, 1, 1, 1),
    "Mixed_3c.b0.conv3d.weight": (128, 256, 1, 1, 1),
    "Mixed_4b.b0.conv3d.weight": (192, 480, 1, 1, 1),
    "Mixed_4e.b1b.bn.bias": (288,),
    "Mixed_4f.b2b.conv3d.weight": (128, 32, 3, 3, 3),
    "Mixed_5b.b0.conv3d.weight": (256, 832, 1, 1, 1),
    "Mixed_5c.b1b.conv3d.weight": (384, 192, 3, 3, 3),
    "Mixed_5c.b3b.bn.running_var": (128,),
    "logits.conv3d.weight": (400, 1024, 1, 1, 1),
    "logits.conv3d.bias": (400,),
}
MODULES = ["Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c",
           "Mixed_4d", "Mixed_4e", "Mixed_4f", "Mixed_5b", "Mixed_5c", "logits"]


@functools.lru_cache(maxsize=1)
def random_i3d_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    model = InceptionI3d()
    for name, buffer in model.named_buffers():  # non-trivial BatchNorm statistics, so loading them is visible
        if name.endswith("running_mean"):
            buffer.normal_(0, 0.1)
        elif name.endswith("running_var"):
            buffer.uniform_(0.5, 1.5)
    return {key: value.clone() for key, value in model.state_dict().items()}


def tiny_i3d_state(drop: tuple[str, ...] = (), replace: dict[str, torch.Tensor] | None = None,
                   ) -> dict[str, torch.Tensor]:
    """The released layout with stride-0 tensors (a file of a few kB), less `drop`, with `replace` put in."""
    with torch.device("meta"):
        shapes = {key: value.shape for key, value in InceptionI3d().state_dict().items()}
    state = {key: torch.zeros(1).expand(shape) for key, shape in shapes.items()
             if not key.endswith("num_batches_tracked") and key not in drop}
    return {**state, **(replace or {})}


def test_i3d_state_dict_has_the_released_keys_and_shapes():
    state = InceptionI3d().state_dict()
    for key, shape in REFERENCE_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert len(state) == 344  # 57 conv+BN units x 6 tensors + the logits' weight and bias
    assert sum(not key.endswith("num_batches_tracked") for key in state) == 287
    assert sorted({key.split(".")[0] for key in state}) == sorted(MODULES)  # pools and the head hold no tensors
    assert not any(key.startswith("logits.bn") for key in state)
    assert sum(value.numel() for key, value in state.items() if "num_batches" not in key and "running" not in key) \
        == 12_697_264  # I3D's ~12.7M parameters


@pytest.mark.parametrize("size", [5, 7, 8, 9, 12])
@pytest.mark.parametrize(("kernel", "stride"), [((1, 1, 1), (1, 1, 1)), ((3, 3, 3), (1, 1, 1)), ((7, 7, 7), (2, 2, 2)),
                                                ((2, 2, 2), (2, 2, 2)), ((1, 3, 3), (1, 2, 2)), ((2, 7, 3), (2, 1, 2))])
def test_same_padding_is_tensorflows(size, kernel, stride):
    x = torch.ones(1, 1, size, size + 1, size + 2)
    padded = pad_same(x, kernel, stride)
    for dim, n, k, s in zip((2, 3, 4), x.shape[2:], kernel, stride):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)  # TF: output size ceil(n / s)
        profile = padded.sum(dim=[d for d in (2, 3, 4) if d != dim]).flatten()
        assert len(profile) == n + total
        nonzero = profile.nonzero().flatten()
        assert nonzero[0].item() == total // 2 and len(nonzero) == n  # the smaller half in front


def test_i3d_refuses_short_clips_and_unresized_frames():
    model = InceptionI3d()
    with pytest.raises(ValueError, match="at least 9 frames, got 5"):
        model(torch.zeros(1, 3, 5, 224, 224))
    with pytest.raises(ValueError, match="prepare_for_i3d"):
        model(torch.zeros(1, 3, 9, 64, 64))


def test_a_file_in_the_released_layout_loads_strictly_through_build_i3d(torch_home):
    state = random_i3d_state()
    path = weights.WEIGHTS["i3d_400"].path
    assert path == torch_home / I3D_FILE
    path.parent.mkdir(parents=True)
    # as VideoGPT's file may be: no BatchNorm counters (they are unused in eval mode)
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    network = build_i3d("cpu")
    assert build_i3d("cpu") is network  # cached for repeated evaluations
    assert not network.training and not any(p.requires_grad for p in network.parameters())
    loaded = network.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    assert weights.verify(weights.WEIGHTS["i3d_400"], path) == file_sha256(path)  # unpinned: checked by loading
    clip = prepare_for_i3d(to_uint8(smooth_clips(0, b=1, t=9), "truncate"))
    logits = network(clip)
    assert logits.shape == (1, 400) and torch.isfinite(logits).all() and logits.std() > 0


def test_a_file_with_other_keys_or_shapes_is_refused_in_one_line(tmp_path, torch_home):
    cases = {"missing": tiny_i3d_state(drop=("Mixed_4c.b1b.bn.running_mean",)),
             "unexpected": tiny_i3d_state(replace={"logits.bn.weight": torch.zeros(400)}),
             "wrong shape": tiny_i3d_state(replace={"logits.conv3d.weight": torch.zeros(101, 1024, 1, 1, 1)})}
    for what, state in cases.items():
        path = tmp_path / f"{what}.pt"
        torch.save(state, path)
        with pytest.raises(CheckpointError, match=what) as error:
            load_i3d(path)
        message = str(error.value)
        assert "\n" not in message and str(path) in message and I3D_FILE in message
    assert "logits.conv3d.weight (101, 1024, 1, 1, 1) vs (400, 1024, 1, 1, 1)" in message
    released_layout = tmp_path / "released_layout.pt"
    torch.save(tiny_i3d_state(), released_layout)
    assert isinstance(load_i3d(released_layout), InceptionI3d)
    counters = {key: torch.tensor(5) for key in InceptionI3d().state_dict() if key.endswith("num_batches_tracked")}
    torch.save({**tiny_i3d_state(), **counters}, released_layout)  # a file saved with BatchNorm counters loads too
    assert load_i3d(released_layout).Mixed_5c.b3b.bn.num_batches_tracked.item() == 5
    # the download check of the unpinned file is this load
    spec = weights.WEIGHTS["i3d_400"]
    with pytest.raises(RuntimeError, match="wrong shape"):
        weights.verify(spec, tmp_path / "wrong shape.pt")
    html = tmp_path / "page.pt"
    html.write_text("<html>Google Drive can't scan this file for viruses</html>")
    with pytest.raises(RuntimeError, match="not a torch file"):
        weights.verify(spec, html)


def test_a_missing_i3d_file_is_named_with_its_path_before_any_model_work(torch_home, monkeypatch):
    path = torch_home / I3D_FILE
    with pytest.raises(weights.MissingWeightsError) as error:
        weights.require(required_weights(["psnr", "fvd"]))
    assert f"put {I3D_FILE} at {path}" in str(error.value) and "sha256 not pinned" in str(error.value)
    fetched = []
    monkeypatch.setattr(weights, "download", lambda names, force=False: fetched.extend(names) or [])
    assert weights._main(["download", "--all"]) == 0 and "i3d_400" in fetched  # `make weights` fetches it too

    class MustNotRun(torch.nn.Module):
        quantizer = type("Q", (), {"codebook_size": 8})()

        def forward(self, *args, **kwargs):
            raise AssertionError("the tokenizer ran before the missing weights were reported")

    with pytest.raises(weights.MissingWeightsError, match=I3D_FILE):
        evaluate(MustNotRun(), [smooth_clips(0)], ["psnr", "rfvd"], "cpu")


# --- the FVD metric ---------------------------------------------------------------------------------------------

def fvd_of(real: torch.Tensor, fake: torch.Tensor, chunks: int = 2, uint8_mode: str = "truncate") -> FVD:
    metric = FVD(torch.device("cpu"), extractor=TinyClipFeatures(), feature_dim=8)
    for r, f in zip(real.chunk(chunks), fake.chunk(chunks)):
        metric.update(EvalBatch.from_clips(r, f, torch.zeros(1, dtype=torch.long), uint8_mode))
    return metric


def test_i3d_inputs_are_the_references_uint8_frames_resized_to_224():
    clips = smooth_clips(1, b=2, t=3, size=16)
    prepared = prepare_for_i3d(to_uint8(clips, "truncate"))
    assert prepared.shape == (2, 3, 3, 224, 224)
    frame = ((clips[1, :, 2] + 1) / 2 * 255).to(torch.uint8).float()  # the reference's `.byte()` truncation
    expected = F.interpolate(frame[None], size=(224, 224), mode="bilinear", align_corners=False)[0] * 2 / 255 - 1
    torch.testing.assert_close(prepared[1, :, 2], expected, rtol=0, atol=1e-6)
    constant = torch.full((1, 3, 2, 8, 8), 51, dtype=torch.uint8)
    torch.testing.assert_close(prepare_for_i3d(constant), torch.full((1, 3, 2, 224, 224), 2 * 51 / 255 - 1))


@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")
def test_fvd_of_a_set_against_itself_is_zero_and_grows_with_noise():
    clips = smooth_clips(2, b=12, t=3)
    assert abs(fvd_of(clips, clips).compute()["rfvd"]) < 1e-6
    values = [fvd_of(clips, noisy(clips, std)).compute()["rfvd"] for std in (0.05, 0.2, 0.5)]
    assert 1e-4 < values[0] < values[1] < values[2]


def tf_gan_frechet(x: np.ndarray, y: np.ndarray) -> float:
    """The reference's `frechet_distance` (TF-GAN form: SVD square roots, unbiased covariance), in numpy float64."""
    def sqrt_psd(m: np.ndarray) -> np.ndarray:
        u, s, vt = np.linalg.svd(m)
        return (u * np.where(s < 1e-10, s, np.sqrt(s))) @ vt

    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = sqrt_psd(cx)
    trace_sqrt = np.trace(sqrt_psd(root @ cy @ root))
    return float(np.trace(cx + cy) - 2 * trace_sqrt + np.sum((x.mean(0) - y.mean(0)) ** 2))


@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")
def test_fvd_equals_the_reference_distance_of_the_stacked_embeddings():
    real = smooth_clips(3, b=24, t=3)
    fake = noisy(real, 0.3)
    extractor = TinyClipFeatures()
    with torch.no_grad():
        x, y = (extractor(prepare_for_i3d(to_uint8(c, "truncate"))).double().numpy() for c in (real, fake))
    expected = tf_gan_frechet(x, y)
    assert expected > 1e-3
    assert fvd_of(real, fake, chunks=3).compute()["rfvd"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")
def test_fvd_in_two_halves_with_summed_state_equals_one_pass():
    """The distributed contract: each rank sums its share, `state()` is all-reduced with SUM, one compute."""
    real = smooth_clips(4, b=12, t=3)
    fake = noisy(real, 0.2)
    whole = fvd_of(real, fake, chunks=3)
    first, second = fvd_of(real[:5], fake[:5], chunks=1), fvd_of(real[5:], fake[5:], chunks=2)
    for mine, theirs in zip(first.state(), second.state()):
        mine += theirs  # what all_reduce(SUM) does on rank 0
    assert first.real.count.item() == first.fake.count.item() == 12
    assert first.compute()["rfvd"] == pytest.approx(whole.compute()["rfvd"], rel=1e-9)


def test_fvd_names_the_sample_count_it_needs():
    one = fvd_of(smooth_clips(5, b=1), smooth_clips(6, b=1), chunks=1)
    with pytest.raises(ValueError, match="rfvd needs at least 2 clips"):
        one.compute()


# --- clips in the framework -------------------------------------------------------------------------------------

def test_clip_batches_keep_frames_in_order_and_give_clips_back():
    clips = smooth_clips(7, b=2, t=3, size=8)
    batch = EvalBatch.from_clips(clips, -clips, torch.zeros(1))
    assert batch.images.shape == (6, 3, 8, 8) and batch.frames_per_clip == 3
    assert torch.equal(batch.images[1 * 3 + 2], clips[1, :, 2])  # (b t): clip-major
    assert torch.equal(batch.clips_uint8, to_uint8(clips)) and torch.equal(batch.reconstructed_clips_uint8,
                                                                           to_uint8(-clips))
    with pytest.raises(ValueError, match="use rfid for images"):
        EvalBatch(clips[:, :, 0], clips[:, :, 0], torch.zeros(1)).clips_uint8


def test_per_frame_psnr_of_clips_equals_psnr_of_the_same_frames_as_images():
    clips = smooth_clips(8, b=3, t=5, size=16)
    recons = noisy(clips, 0.1)
    as_clips, as_images = PSNR(torch.device("cpu")), PSNR(torch.device("cpu"))
    as_clips.update(EvalBatch.from_clips(clips, recons, torch.zeros(1)))
    for t in range(clips.shape[2]):  # frame t of every clip, as a batch of images
        as_images.update(EvalBatch(clips[:, :, t], recons[:, :, t], torch.zeros(1)))
    assert as_clips.count.item() == as_images.count.item() == 15
    assert as_clips.compute()["psnr"] == pytest.approx(as_images.compute()["psnr"], rel=1e-12)


@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")
def test_evaluate_on_clips_of_a_real_tiny_video_tokenizer_equals_direct_computation():
    tokenizer = tiny_video_tokenizer()
    batches = [smooth_clips(9, b=2, t=5), smooth_clips(10, b=1, t=5)]  # LPIPS-AlexNet needs >= 32 px
    results = evaluate(tokenizer, batches, ["psnr", "ssim", "lpips_alex", "usage", "fvd"], "cpu",
                       uint8_mode="truncate", fvd_extractor=TinyClipFeatures(), fvd_feature_dim=8,
                       lpips_networks={"lpips_alex": random_lpips()})
    clips = torch.cat(batches)
    with torch.no_grad():
        outputs = [tokenizer(batch) for batch in batches]  # batch by batch, as evaluate() runs them
        recons = torch.cat([output.reconstruction for output in outputs]).clamp(-1, 1)
        indices = torch.cat([output.quantizer.indices for output in outputs])
        frames, recon_frames = (c.transpose(1, 2).flatten(0, 1) for c in (clips, recons))  # `(b t) 3 h w`
        lpips_mean = random_lpips()(recon_frames, frames).mean().item()
        extractor = TinyClipFeatures()
        x, y = (extractor(prepare_for_i3d(to_uint8(c, "truncate"))).double().numpy() for c in (clips, recons))
    a, b = to_uint8(frames, "truncate"), to_uint8(recon_frames, "truncate")
    counts = np.bincount(indices.flatten().numpy(), minlength=tokenizer.quantizer.codebook_size)
    assert results["num_images"] == 3 and results["num_frames"] == 15
    assert results["psnr"] == pytest.approx(psnr_per_image(a, b).mean().item(), rel=1e-9)
    assert results["ssim"] == pytest.approx(ssim_per_image(a, b).mean().item(), rel=1e-9)
    assert results["lpips_alex"] == pytest.approx(lpips_mean, rel=1e-4)
    assert results["codes_used"] == (counts > 0).sum() and results["codes_used"] > 0
    assert results["rfvd"] == pytest.approx(tf_gan_frechet(x, y), rel=1e-4) and results["rfvd"] > 0


def test_rfid_on_clips_and_rfvd_on_images_are_refused_before_the_tokenizer_runs():
    class MustNotRun(torch.nn.Module):
        quantizer = type("Q", (), {"codebook_size": 8})()

        def forward(self, *args, **kwargs):
            raise AssertionError("the tokenizer ran before the metric selection was refused")

    with pytest.raises(ValueError, match="rfid is an image metric; for clips use rfvd"):
        evaluate(MustNotRun(), [smooth_clips(0)], ["psnr", "fid"], "cpu")
    with pytest.raises(ValueError, match="rfvd is a video metric .* for images use rfid"):
        evaluate(MustNotRun(), [torch.zeros(2, 3, 16, 16)], ["rfvd"], "cpu")
    with pytest.raises(TypeError, match=r"images `b 3 H W` or clips `b 3 t H W`.*shape \(2, 16, 16\)"):
        evaluate(MustNotRun(), [torch.zeros(2, 16, 16)], ["psnr"], "cpu")
    check_metrics_apply(["psnr", "ssim", "lpips", "usage", "rfvd"], clips=True)
    check_metrics_apply(["psnr", "ssim", "lpips", "usage", "rfid"], clips=False)
    assert resolve_metrics(["fvd", "rfvd"]) == ["rfvd"] and required_weights(["rfvd"]) == ["i3d_400"]


def test_images_and_clips_are_not_mixed_in_one_call():
    with pytest.raises(TypeError, match="evaluate images and clips in separate calls"):
        evaluate(tiny_video_tokenizer(), [smooth_clips(0, b=1), torch.zeros(1, 3, 32, 32)], ["psnr"], "cpu")


def test_eval_py_refuses_rfvd_for_image_tokenizers_as_a_config_error(tmp_path):
    import importlib.util

    from hydra import compose, initialize_config_dir

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("eval_entry_point", root / "eval.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    not_a_checkpoint = tmp_path / "model.pt"
    not_a_checkpoint.write_text("refused before anything reads this")
    with initialize_config_dir(str(root / "conf"), version_base="1.3"):
        cfg = compose("eval", [f"ckpt={not_a_checkpoint}", "metrics=[psnr,fvd]"])
    with pytest.raises(entry.ConfigError, match="for images use rfid"):
        entry.run(cfg)
