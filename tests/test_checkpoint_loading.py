"""Loading weights: released Lightning .ckpt layout (raw and EMA), our training checkpoints, safetensors folders."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from openmagvit2 import Tokenizer
from openmagvit2.config import model_preset
from openmagvit2.models.loading import (CheckpointMismatchError, check_fits, ema_key, infer_architecture,
                                        matching_architectures)

REFERENCE_DETAILED = Path(__file__).resolve().parents[2] / "shared" / "REFERENCE-DETAILED.md"  # ../shared in CI
TINY_V3 = {**model_preset("tiny"), "adaptive_norm": True}  # a small model with every kind of released key


def seeded_tokenizer(seed: int, **hparams) -> Tokenizer:
    torch.manual_seed(seed)
    return Tokenizer(**(hparams or TINY_V3))


def released_checkpoint(raw: Tokenizer, ema: Tokenizer | None) -> dict:
    """A dict laid out like the released Lightning files (REFERENCE-DETAILED §6), built from our modules."""
    state = {key: value.clone() for key, value in raw.state_dict().items()}
    state["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4)
    state["loss.discriminator.main.3.running_mean"] = torch.zeros(128)
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1)
    if ema is not None:
        state["model_ema.decay"] = torch.tensor(0.999)
        state["model_ema.num_updates"] = torch.tensor(-1, dtype=torch.int)
        for name, value in ema.named_parameters():
            state["model_ema." + name.replace(".", "")] = value.detach().clone()
        state["model_ema.lossdiscriminatormain0weight"] = torch.randn(64, 3, 4, 4)
    return {"state_dict": state, "epoch": 3, "global_step": 15015}


def assert_same_weights(model: Tokenizer, reference: Tokenizer) -> None:
    loaded, expected = model.state_dict(), reference.state_dict()
    assert loaded.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(loaded[key], expected[key], rtol=0, atol=0, msg=key)


def appendix_keys() -> list[tuple[str, tuple[int, ...]]]:
    """Released 256_L encoder/decoder keys and shapes, in checkpoint order (REFERENCE-DETAILED Appendix A)."""
    text = REFERENCE_DETAILED.read_text()
    appendix = text[text.index("## Appendix A"):]
    rows = re.findall(r"^((?:encoder|decoder)\.\S+)\s+\(([\d, ]*)\)$", appendix, flags=re.MULTILINE)
    return [(name, tuple(int(d) for d in dims.replace(" ", "").split(",") if d)) for name, dims in rows]


def test_state_dict_matches_released_256_large_keys_shapes_and_order() -> None:
    expected = appendix_keys()
    assert len(expected) == 339
    with torch.device("meta"):
        tokenizer = Tokenizer(**model_preset("openmagvit2_v3_256_large"))
    ours = [(name, tuple(value.shape)) for name, value in tokenizer.state_dict().items()]
    assert ours == expected


def test_released_128_large_layout() -> None:
    with torch.device("meta"):
        state = Tokenizer(**model_preset("openmagvit2_v3_128_large")).state_dict()
    assert sum(k.startswith("encoder.") for k in state) == 133 and sum(k.startswith("decoder.") for k in state) == 150
    shortcuts = {k: tuple(v.shape[:2]) for k, v in state.items() if "nin_shortcut" in k}
    assert shortcuts == {"encoder.down.1.block.0.nin_shortcut.weight": (256, 128),
                         "encoder.down.3.block.0.nin_shortcut.weight": (512, 256),
                         "decoder.up.0.block.0.nin_shortcut.weight": (128, 256),
                         "decoder.up.2.block.0.nin_shortcut.weight": (256, 512)}
    assert [state[f"decoder.up.{i}.upsample.conv1.weight"].shape[0] for i in (1, 2, 3)] == [1024, 1024, 2048]
    assert [state[f"decoder.adaptive.{i}.gamma.weight"].shape[0] for i in range(4)] == [256, 256, 512, 512]


def test_ema_key_drops_dots() -> None:
    assert ema_key("encoder.down.0.block.0.conv1.weight") == "model_ema.encoderdown0block0conv1weight"
    assert ema_key("decoder.up.1.upsample.conv1.weight") == "model_ema.decoderup1upsampleconv1weight"


def test_released_ckpt_loads_ema_weights_by_default_and_raw_on_request(tmp_path: Path) -> None:
    raw, ema = seeded_tokenizer(0), seeded_tokenizer(1)
    path = tmp_path / "imagenet_tiny_L.ckpt"
    torch.save(released_checkpoint(raw, ema), path)
    loaded = Tokenizer.from_checkpoint(path, model=TINY_V3)
    assert_same_weights(loaded, ema)
    assert not loaded.training
    assert_same_weights(Tokenizer.from_checkpoint(path, model=TINY_V3, use_ema=False), raw)
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).reconstruction, ema.eval()(images).reconstruction)


def test_released_ckpt_without_ema_loads_raw_weights(tmp_path: Path) -> None:
    raw = seeded_tokenizer(0)
    path = tmp_path / "no_ema.ckpt"
    torch.save(released_checkpoint(raw, None), path)
    assert_same_weights(Tokenizer.from_checkpoint(path, model=TINY_V3, use_ema=True), raw)


@pytest.mark.parametrize(("adaptive_norm", "bit_order"), [(False, "msb_first"), (True, "lsb_first")])
def test_architecture_and_bit_order_inferred_from_released_keys(tmp_path: Path, adaptive_norm: bool,
                                                                bit_order: str) -> None:
    hparams = {**model_preset("tiny"), "ch_mult": [1, 2, 2, 4], "num_res_blocks": 2, "adaptive_norm": adaptive_norm}
    raw = seeded_tokenizer(0, **hparams)
    torch.save(released_checkpoint(raw, None), tmp_path / "model.ckpt")
    loaded = Tokenizer.from_checkpoint(tmp_path / "model.ckpt")
    assert loaded.hparams == {**raw.hparams, "bit_order": bit_order}
    assert_same_weights(loaded, raw)


def test_mismatched_checkpoints_name_the_key_and_the_right_model(tmp_path: Path) -> None:
    checkpoint = released_checkpoint(seeded_tokenizer(0), None)
    torch.save(checkpoint, tmp_path / "v3.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"has decoder\.adaptive\.0\.gamma\.weight which the model "
                       r"lacks \(12 unexpected"):
        Tokenizer.from_checkpoint(tmp_path / "v3.ckpt", model=model_preset("tiny"))  # a v1 model for a v3 file
    del checkpoint["state_dict"]["encoder.mid_block.0.conv2.weight"]
    torch.save(checkpoint, tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"lacks encoder\.mid_block\.0\.conv2\.weight \(1 missing"):
        Tokenizer.from_checkpoint(tmp_path / "missing.ckpt", model=TINY_V3)
    checkpoint = released_checkpoint(seeded_tokenizer(0), seeded_tokenizer(1))
    checkpoint["state_dict"]["model_ema.decoderconv_outweight"] = torch.zeros(3, 32, 1, 1)
    torch.save(checkpoint, tmp_path / "shape.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"decoder\.conv_out\.weight has shape \(3, 32, 1, 1\)"):
        Tokenizer.from_checkpoint(tmp_path / "shape.ckpt", model=TINY_V3)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Tokenizer.from_checkpoint(tmp_path / "absent.ckpt")


@pytest.mark.parametrize("use_ema", [True, False])
def test_our_training_checkpoint(tmp_path: Path, use_ema: bool) -> None:
    hparams = {**model_preset("tiny"), "bit_order": "msb_first"}
    raw, ema = seeded_tokenizer(0, **hparams), seeded_tokenizer(1, **hparams)
    checkpoint = {"format": "openmagvit2", "version": 1, "step": 7, "tokenizer_hparams": raw.hparams,
                  "generator": raw.state_dict(), "generator_ema": ema.state_dict(), "discriminator": {},
                  "config": {"model": {"name": "tiny"}}}
    torch.save(checkpoint, tmp_path / "step_00000007.pt")
    loaded = Tokenizer.from_checkpoint(tmp_path / "step_00000007.pt", use_ema=use_ema)
    assert loaded.hparams["bit_order"] == "msb_first"  # architecture from the checkpoint, not from a preset
    assert_same_weights(loaded, ema if use_ema else raw)
    checkpoint["generator_ema"] = None
    torch.save(checkpoint, tmp_path / "no_ema.pt")
    assert_same_weights(Tokenizer.from_checkpoint(tmp_path / "no_ema.pt", use_ema=True), raw)


def test_our_checkpoint_from_a_compiled_ddp_model(tmp_path: Path) -> None:
    raw = seeded_tokenizer(0, **model_preset("tiny"))
    wrapped = {"module._orig_mod." + key: value for key, value in raw.state_dict().items()}
    torch.save({"format": "openmagvit2", "tokenizer_hparams": raw.hparams, "generator": wrapped,
                "generator_ema": None}, tmp_path / "c.pt")
    assert_same_weights(Tokenizer.from_checkpoint(tmp_path / "c.pt"), raw)


def test_save_pretrained_round_trip(tmp_path: Path) -> None:
    tokenizer = seeded_tokenizer(3)
    folder = tokenizer.save_pretrained(tmp_path / "export")
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "openmagvit2" and config["tokenizer_hparams"] == tokenizer.hparams
    for loaded in (Tokenizer.from_pretrained(folder), Tokenizer.from_checkpoint(folder)):
        assert loaded.hparams == tokenizer.hparams
        assert_same_weights(loaded, tokenizer)
    with pytest.raises(FileNotFoundError, match="config.json"):
        Tokenizer.from_pretrained(tmp_path)


def test_model_names_resolve_through_the_shipped_model_configs(tmp_path: Path) -> None:
    raw = seeded_tokenizer(0, **model_preset("tiny"))
    torch.save(released_checkpoint(raw, None), tmp_path / "tiny.ckpt")
    loaded = Tokenizer.from_checkpoint(tmp_path / "tiny.ckpt", model="tiny")
    assert loaded.hparams == raw.hparams  # conf/model/tiny.yaml, plus the quantizer schema's defaults
    assert_same_weights(loaded, raw)


def meta_state(name: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return Tokenizer(**model_preset(name)).state_dict()


@pytest.mark.parametrize("name", ["openmagvit2_v1_128_base", "openmagvit2_v1_256_base", "openmagvit2_v3_128_large",
                                  "openmagvit2_v3_256_large", "tiny"])
def test_every_preset_is_recognised_from_its_keys_and_shapes(name: str) -> None:
    architecture = infer_architecture(meta_state(name))
    assert {key: architecture[key] for key in ("ch", "ch_mult", "num_res_blocks", "adaptive_norm")} == {
        key: model_preset(name)[key] for key in ("ch", "ch_mult", "num_res_blocks", "adaptive_norm")}
    assert matching_architectures(architecture) == [name]


def test_a_base_model_on_a_large_file_is_refused_naming_the_large_preset() -> None:
    # Every v1_256_base tensor also exists, with the same shape, in v3_256_large: only the leftovers tell them apart.
    base, large = meta_state("openmagvit2_v1_256_base"), meta_state("openmagvit2_v3_256_large")
    assert all(key in large and large[key].shape == value.shape for key, value in base.items())
    with torch.device("meta"):
        model = Tokenizer(**model_preset("openmagvit2_v1_256_base"))
    assert (len(base), len(large)) == (175, 339)
    with pytest.raises(CheckpointMismatchError, match=r"\(164 unexpected key\(s\)\); the file holds ch=128 "
                       r"ch_mult=\[1, 1, 2, 2, 4\] num_res_blocks=4 adaptive_norm=True: pass "
                       r"model=openmagvit2_v3_256_large or omit model="):
        check_fits(model, large, "imagenet_256_L.ckpt", "model=openmagvit2_v1_256_base")


def test_a_smaller_model_on_the_default_ema_path_is_refused(tmp_path: Path) -> None:
    """The EMA path used to take only the tensors the model asked for: a 1-block model loaded half of a 2-block file."""
    hparams = {**model_preset("tiny"), "num_res_blocks": 2}
    torch.save(released_checkpoint(seeded_tokenizer(0, **hparams), seeded_tokenizer(1, **hparams)),
               tmp_path / "two_blocks.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"does not fit model=tiny: it has encoder\.down\.0\.block\.1\."
                       r"norm1\.weight which the model lacks .* num_res_blocks=2 adaptive_norm=False: pass these "
                       r"hyper-parameters or omit model="):
        Tokenizer.from_checkpoint(tmp_path / "two_blocks.ckpt", model="tiny")
    assert Tokenizer.from_checkpoint(tmp_path / "two_blocks.ckpt").hparams["num_res_blocks"] == 2


def test_a_wrong_model_for_a_file_names_the_preset_that_fits(tmp_path: Path) -> None:
    tiny = seeded_tokenizer(0, **model_preset("tiny"))
    torch.save(released_checkpoint(tiny, seeded_tokenizer(1, **model_preset("tiny"))), tmp_path / "tiny.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"lacks decoder\.adaptive\.0\.gamma\.weight .*pass model=tiny"):
        Tokenizer.from_checkpoint(tmp_path / "tiny.ckpt", model=TINY_V3)


def test_our_checkpoint_refuses_a_model_with_another_bit_order(tmp_path: Path) -> None:
    raw = seeded_tokenizer(0, **{**model_preset("tiny"), "bit_order": "msb_first"})
    torch.save({"format": "openmagvit2", "tokenizer_hparams": raw.hparams, "generator": raw.state_dict(),
                "generator_ema": None}, tmp_path / "ours.pt")
    with pytest.raises(CheckpointMismatchError, match="bit_order=msb_first but model=tiny has bit_order=lsb_first"):
        Tokenizer.from_checkpoint(tmp_path / "ours.pt", model="tiny")


def test_safetensors_folder_with_a_leftover_key_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = seeded_tokenizer(3).save_pretrained(tmp_path / "export")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["decoder.extra.weight"] = torch.zeros(1)
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"has decoder\.extra\.weight which the model lacks"):
        Tokenizer.from_pretrained(folder)
