"""LFQ: exact factorised entropies vs the dense MAGVIT-2 formula, bit orders, straight-through, argument checks."""
from __future__ import annotations

import pytest
import torch
from einops import rearrange

from openmagvit2 import LFQ
from openmagvit2.models.entropy import MAX_ENTROPY_BITS

TEMPERATURE, EPS = 0.01, 1e-5


def all_codes(bits: int) -> torch.Tensor:
    """Every code of {-1, 1}^bits, LSB first, float64: `2^bits bits`."""
    index = torch.arange(2 ** bits)
    return (((index[:, None] >> torch.arange(bits)) & 1) * 2 - 1).double()


def dense_entropies(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference formula as Open-MAGVIT2 writes it: dense `n 2^K` logits. z: `b k h w`."""
    tokens = rearrange(z, "b k h w -> (b h w) k")
    logits = 2 * tokens @ all_codes(tokens.shape[1]).to(tokens.dtype).T
    probs = torch.softmax(logits / TEMPERATURE, dim=-1)
    log_probs = torch.log_softmax(logits / TEMPERATURE + 1e-5, dim=-1)
    per_sample = (-(probs * log_probs).sum(dim=-1)).mean()
    mean_probs = probs.mean(dim=0)
    return per_sample, -(mean_probs * torch.log(mean_probs + EPS)).sum()


def chunked_dense_entropies(z: torch.Tensor, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The same dense formula, accumulated over token chunks so that K = 18 fits in memory (no gradients)."""
    tokens = rearrange(z, "b k h w -> (b h w) k")
    codes = all_codes(tokens.shape[1]).to(tokens.dtype)
    prob_sum = torch.zeros(codes.shape[0], dtype=tokens.dtype)
    entropy_sum = torch.zeros((), dtype=tokens.dtype)
    for part in tokens.split(chunk):
        logits = 2 * part @ codes.T / TEMPERATURE
        probs = torch.softmax(logits, dim=-1)
        entropy_sum += -(probs * torch.log_softmax(logits + 1e-5, dim=-1)).sum()
        prob_sum += probs.sum(dim=0)
    mean_probs = prob_sum / tokens.shape[0]
    return entropy_sum / tokens.shape[0], -(mean_probs * torch.log(mean_probs + EPS)).sum()


SCALES = [1e-4, 3e-3, 0.05, 1.0, 30.0]  # near 0 (almost uniform bits) ... |z| large (saturated bits)


@pytest.mark.parametrize("bits", [1, 5, 8, 11, 12])
@pytest.mark.parametrize("scale", SCALES)
def test_entropies_and_gradients_match_dense_fp64(bits: int, scale: float) -> None:
    generator = torch.Generator().manual_seed(bits * 100 + int(scale * 1000))
    z = (torch.randn(2, bits, 3, 4, generator=generator, dtype=torch.float64) * scale).requires_grad_()
    out = LFQ(codebook_bits=bits, entropy_temperature=TEMPERATURE, entropy_eps=EPS).train()(z)
    dense_sample, dense_codebook = dense_entropies(z)

    torch.testing.assert_close(out.per_sample_entropy, dense_sample, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.codebook_entropy, dense_codebook, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.entropy_loss, dense_sample - dense_codebook, rtol=1e-9, atol=1e-12)
    for ours, theirs in [(out.per_sample_entropy, dense_sample), (out.codebook_entropy, dense_codebook)]:
        (grad_ours,) = torch.autograd.grad(ours, z, retain_graph=True)
        (grad_dense,) = torch.autograd.grad(theirs, z, retain_graph=True)
        torch.testing.assert_close(grad_ours, grad_dense, rtol=1e-7, atol=1e-10)
    assert out.per_sample_entropy.dtype == torch.float64


def test_loss_weights_enter_as_in_the_reference() -> None:
    z = torch.randn(2, 6, 4, 4, dtype=torch.float64) * 0.01
    out = LFQ(codebook_bits=6, sample_minimization_weight=0.3, batch_maximization_weight=2.0).train()(z)
    dense_sample, dense_codebook = dense_entropies(z)
    torch.testing.assert_close(out.entropy_loss, 0.3 * dense_sample - 2.0 * dense_codebook)
    torch.testing.assert_close(out.commitment, ((z - torch.where(z > 0, 1.0, -1.0)) ** 2).mean())


def test_k18_matches_chunked_dense() -> None:
    z = torch.randn(2, 18, 4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.01
    out = LFQ(codebook_bits=18).train()(z)
    dense_sample, dense_codebook = chunked_dense_entropies(z)
    torch.testing.assert_close(out.per_sample_entropy, dense_sample, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.codebook_entropy, dense_codebook, rtol=1e-9, atol=1e-12)
    # the fp32 path (the one used in training) agrees to fp32 precision
    out32 = LFQ(codebook_bits=18).train()(z.float())
    assert out32.codebook_entropy.dtype == torch.float32
    torch.testing.assert_close(out32.codebook_entropy.double(), dense_codebook, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out32.per_sample_entropy.double(), dense_sample, rtol=1e-4, atol=1e-5)


def test_k18_gradients_match_dense() -> None:
    z = (torch.randn(1, 18, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.02
         ).requires_grad_()
    out = LFQ(codebook_bits=18).train()(z)
    (grad_ours,) = torch.autograd.grad(out.entropy_loss, z)
    dense_sample, dense_codebook = dense_entropies(z)
    (grad_dense,) = torch.autograd.grad(dense_sample - dense_codebook, z)
    torch.testing.assert_close(grad_ours, grad_dense, rtol=1e-7, atol=1e-10)


def test_entropy_runs_in_fp32_under_autocast() -> None:
    z = torch.randn(2, 10, 4, 4) * 0.01
    z_bf16 = z.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = LFQ(codebook_bits=10).train()(z_bf16)
    assert out.codebook_entropy.dtype == torch.float32 and out.per_sample_entropy.dtype == torch.float32
    assert out.quantized.dtype == torch.bfloat16
    dense_sample, dense_codebook = dense_entropies(z_bf16.double())
    torch.testing.assert_close(out.codebook_entropy.double(), dense_codebook, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.per_sample_entropy.double(), dense_sample, rtol=1e-5, atol=1e-6)


def test_quantization_and_straight_through() -> None:
    z = torch.tensor([[-2.0, -0.0, 0.0, 1e-8, 3.0]]).reshape(1, 5, 1, 1).requires_grad_()
    out = LFQ(codebook_bits=5).train()(z)
    assert out.quantized.flatten().tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0]  # zero maps to -1, as released
    out.quantized.mul(torch.arange(5.0).reshape(1, 5, 1, 1)).sum().backward()
    assert z.grad.flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]  # identity gradient


@pytest.mark.parametrize("bit_order", ["lsb_first", "msb_first"])
def test_index_bit_orders(bit_order: str) -> None:
    bits = 18
    quantizer = LFQ(codebook_bits=bits, bit_order=bit_order)
    one_hot = -torch.ones(2, bits, 1, 1)
    one_hot[0, 0] = 1.0  # only channel 0 positive
    one_hot[1, bits - 1] = 1.0  # only the last channel positive
    indices = quantizer(one_hot).indices.flatten().tolist()
    assert indices == ([1, 2 ** 17] if bit_order == "lsb_first" else [2 ** 17, 1])
    assert quantizer(torch.ones(1, bits, 1, 1)).indices.item() == 2 ** bits - 1
    assert quantizer(-torch.ones(1, bits, 1, 1)).indices.item() == 0


@pytest.mark.parametrize("bit_order", ["lsb_first", "msb_first"])
def test_indices_round_trip(bit_order: str) -> None:
    quantizer = LFQ(codebook_bits=18, bit_order=bit_order)
    indices = torch.randint(0, 2 ** 18, (3, 5, 7))
    codes = quantizer.indices_to_codes(indices)
    assert codes.shape == (3, 18, 5, 7) and set(codes.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(quantizer.codes_to_indices(codes), indices)
    z = torch.randn(3, 18, 5, 7)
    out = quantizer(z)
    assert out.indices.dtype == torch.int64 and out.indices.shape == (3, 5, 7)
    assert torch.equal(quantizer.indices_to_codes(out.indices), out.quantized)


def test_bit_orders_are_reverses_of_each_other() -> None:
    z = torch.randn(4, 12, 3, 3)
    lsb_first, msb_first = LFQ(codebook_bits=12, bit_order="lsb_first"), LFQ(codebook_bits=12, bit_order="msb_first")
    lsb, msb = lsb_first(z).indices, msb_first(z).indices
    assert torch.equal(lsb_first(z.flip(1)).indices, msb)
    assert not torch.equal(lsb, msb)


def test_eval_mode_skips_losses_and_module_has_no_state() -> None:
    quantizer = LFQ(codebook_bits=18).eval()
    out = quantizer(torch.randn(2, 18, 4, 4))
    assert out.entropy_loss.item() == 0.0 and out.commitment.item() == 0.0
    assert quantizer(torch.randn(2, 18, 4, 4), compute_losses=True).commitment.item() > 0.0
    assert list(quantizer.parameters()) == [] and quantizer.state_dict() == {}


def test_zero_entropy_weights_skip_entropy_but_keep_commitment() -> None:
    quantizer = LFQ(codebook_bits=29, sample_minimization_weight=0.0, batch_maximization_weight=0.0)
    out = quantizer.train()(torch.randn(1, 29, 2, 2))
    assert out.entropy_loss.item() == 0.0 and out.commitment.item() > 0.0
    assert out.indices.max().item() < 2 ** 29


@pytest.mark.parametrize("bits", [0, 31])
def test_codebook_bits_out_of_range_is_refused(bits: int) -> None:
    with pytest.raises(ValueError, match="codebook_bits"):
        LFQ(codebook_bits=bits)


def test_entropy_beyond_memory_limit_is_refused_with_its_need() -> None:
    with pytest.raises(ValueError, match=r"GiB"):
        LFQ(codebook_bits=MAX_ENTROPY_BITS + 1)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="bit_order"):
        LFQ(codebook_bits=8, bit_order="big_endian")
    with pytest.raises(ValueError, match="codebook_bits"):
        LFQ(codebook_bits=8)(torch.randn(1, 7, 2, 2))
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        LFQ(codebook_bits=8).indices_to_codes(torch.tensor([[[256]]]))
    with pytest.raises(TypeError, match="integer"):
        LFQ(codebook_bits=8).indices_to_codes(torch.zeros(1, 1, 1))
