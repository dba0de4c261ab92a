"""The CPU device guard (tests/device_guard.py) reproduces CUDA's rules for mixing device and host tensors."""
from __future__ import annotations

import pytest
import torch

from device_guard import DeviceGuard, DeviceMismatchError


def test_stack_of_device_and_host_scalar_fails() -> None:
    with DeviceGuard() as guard:
        on_device = torch.ones((), device=guard.device)
        with pytest.raises(DeviceMismatchError, match="same device"):
            torch.stack([on_device, torch.tensor(0.5)])
        with pytest.raises(DeviceMismatchError):
            torch.cat([on_device.reshape(1), torch.zeros(1)])


def test_binary_op_with_host_scalar_passes_as_on_cuda() -> None:
    with DeviceGuard() as guard:
        on_device = torch.arange(4.0, device=guard.device)
        total = on_device + torch.tensor(2.0)
        total *= torch.tensor(3.0)
        assert guard.logical_device(total) == "device"
        assert torch.equal(total.cpu(), (torch.arange(4.0) + 2) * 3)
        with pytest.raises(DeviceMismatchError):  # a host tensor with elements is not a "CPU scalar"
            on_device + torch.ones(4)
        with pytest.raises(DeviceMismatchError):  # nor may a host scalar be written from the device
            torch.tensor(0.0).add_(on_device.sum())


def test_device_follows_data_and_moves_copy() -> None:
    with DeviceGuard() as guard:
        images = torch.rand(2, 3).to(guard.device)
        assert images.device == guard.device and images.device != torch.device("cpu")
        follows = torch.zeros((), device=images.device)
        assert guard.logical_device(follows) == "device"
        assert guard.logical_device(images.view(3, 2)) == "device"
        assert guard.logical_device(images.data) == "device"
        assert guard.logical_device(torch.as_tensor(images)) == "device"  # as_tensor of a tensor: itself
        assert guard.logical_device(images) == "device"
        host = images.cpu()
        assert guard.logical_device(host) == "host" and guard.logical_device(images) == "device"
        with pytest.raises(TypeError, match="numpy"):
            images.numpy()
        assert host.numpy().shape == (2, 3)
        torch.stack([host, torch.zeros(2, 3)])  # all host: fine
        module = torch.nn.Linear(3, 2).to(guard.device)
        assert all(guard.logical_device(p) == "device" for p in module.parameters())
        module(images).sum().backward()
        assert all(guard.logical_device(p.grad) == "device" for p in module.parameters())


def test_mean_across_ranks_accepts_host_scalars_which_the_old_stack_did_not() -> None:
    from openmagvit2.train.distributed import DistributedContext, mean_across_ranks

    with DeviceGuard() as guard:
        ctx = DistributedContext(rank=0, world_size=1, local_rank=0, device=guard.device)
        values = {"loss": torch.tensor(2.0, device=guard.device), "codebook/batch_usage": torch.tensor(0.25)}
        assert mean_across_ranks(values, ctx) == {"codebook/batch_usage": 0.25, "loss": 2.0}
        with pytest.raises(DeviceMismatchError, match="stack"):  # the line before the fix (review 7.1)
            torch.stack([values[name].detach().float().reshape(()) for name in sorted(values)]).to(ctx.device)


def test_host_model_on_device_data_fails() -> None:
    with DeviceGuard() as guard:
        module = torch.nn.Linear(3, 2)  # forgot .to(device)
        with pytest.raises(DeviceMismatchError):
            module(torch.rand(2, 3).to(guard.device))


# --- the training loop, the losses and the evaluation under the guard ------------------------------------------------

def guarded_train(overrides: list[str], run_dir, monkeypatch) -> int:
    """train.py's `train()` in-process, with `ctx.device` the guard's stand-in accelerator."""
    import dataclasses

    import train as train_module
    from conftest import FAST, compose_config
    from openmagvit2.config import validate_config

    cfg = compose_config(FAST + overrides)
    validate_config(cfg)
    with DeviceGuard() as guard:
        real_init = train_module.init_distributed
        monkeypatch.setattr(train_module, "init_distributed",
                            lambda preference: dataclasses.replace(real_init(preference), device=guard.device))
        return train_module.train(cfg, run_dir)


@pytest.mark.slow
def test_train_loop_runs_under_the_guard(tmp_path, monkeypatch) -> None:
    """Before disc_start (d_grad_norm) and after it (D step, LeCam, EMA); logging, images and eval every step."""
    assert guarded_train(["train.max_steps=2", "loss.disc_start=1", "train.ema_decay=0.9", "train.ckpt_every=2",
                          "train.image_every=1", "train.eval_every=1", "train.channels_last=true"],
                         tmp_path, monkeypatch) == 0
    assert (tmp_path / "COMPLETED").exists()


def test_evaluation_runs_under_the_guard() -> None:
    """Every metric, the pretrained networks replaced by random stand-ins (as in test_eval.py; injected networks
    are the caller's to place, like the tokenizer)."""
    from conftest import TinyFeatures
    from test_eval import image_batches, random_lpips, tiny_tokenizer

    from openmagvit2.eval import evaluate

    expected = evaluate(tiny_tokenizer(), image_batches(), ["psnr", "ssim", "usage"], "cpu")
    with DeviceGuard() as guard:
        tokenizer = tiny_tokenizer().to(guard.device)
        results = evaluate(tokenizer, image_batches(), ["rfid", "psnr", "ssim", "lpips_alex", "usage"], guard.device,
                           fid_mode="legacy_pytorch", fid_extractor=TinyFeatures(seed=123).to(guard.device),
                           fid_feature_dim=8, lpips_networks={"lpips_alex": random_lpips().to(guard.device)})
    for name, value in expected.items():
        assert results[name] == pytest.approx(value), name


def test_generator_and_discriminator_losses_run_under_the_guard() -> None:
    """The loss terms with a (random) LPIPS, the adaptive weight, LeCam and both GAN terms, forward and backward."""
    from test_losses_tokenizer_loss import QuantizerOut

    from openmagvit2.losses import TokenizerLoss, build_discriminator, build_perceptual_loss

    torch.manual_seed(0)
    perceptual = build_perceptual_loss(pretrained_backbone=False)
    with DeviceGuard() as guard:
        loss = TokenizerLoss({"perceptual_weight": 0.5, "lecam_weight": 0.001, "disc_start": 0},
                             perceptual=perceptual).to(guard.device)
        discriminator = build_discriminator({"disc_channels": 8, "disc_layers": 2}).to(guard.device)
        images = torch.rand(2, 3, 32, 32).to(guard.device) * 2 - 1
        last_layer = torch.nn.Parameter(torch.ones(3, device=guard.device))
        reconstruction = images.flip(-1) * last_layer.reshape(1, 3, 1, 1)
        quantizer = QuantizerOut(*(torch.tensor(value, device=guard.device) for value in (0.1, 2.0, 1.9, 0.2)))
        g_loss, g_logs = loss.generator_loss(images, reconstruction, quantizer, discriminator, step=1,
                                             last_layer=last_layer)
        g_loss.backward()
        d_loss, d_logs = loss.discriminator_loss(images, reconstruction.detach(), discriminator, step=1)
        d_loss.backward()
        for value in [g_loss, d_loss, *g_logs.values(), *d_logs.values()]:
            assert guard.logical_device(value) == "device" and torch.isfinite(value)
