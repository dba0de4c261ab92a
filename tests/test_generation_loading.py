"""AR checkpoints: the released Lightning layout (transformer.* + first_stage_model.*), our own files, configs."""
from __future__ import annotations

import pytest
import torch

from openmagvit2 import ARModel, Tokenizer
from openmagvit2.generation import ARModelConfig, ar_model_config, ar_model_names
from openmagvit2.config import model_preset


def random_tiny(seed: int = 0) -> ARModel:
    torch.manual_seed(seed)
    model = ARModel.from_config("ar_tiny")
    with torch.no_grad():
        for head in model.head:
            head.weight.normal_()
    return model


def released_ar_file(model: ARModel, tokenizer: Tokenizer) -> dict:
    """An AR_256_*.ckpt-like dict built from our modules (REFERENCE-STAGE2 §4)."""
    state = {"transformer." + k: v.clone() for k, v in model.state_dict().items()}
    state.update({"first_stage_model." + k: v.clone() for k, v in tokenizer.state_dict().items()})
    return {"state_dict": state, "epoch": 299, "global_step": 500_000}


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_released_layout_loads_strict_for_both_models(tmp_path) -> None:
    model = random_tiny()
    torch.manual_seed(1)
    tokenizer = Tokenizer(**{**model_preset("tiny"), "adaptive_norm": True})
    path = tmp_path / "AR_256_tiny.ckpt"
    torch.save(released_ar_file(model, tokenizer), path)

    loaded = ARModel.from_checkpoint(path)  # sizes match conf/ar_model/ar_tiny.yaml
    assert_same_state(loaded, model)
    assert not loaded.training and loaded.config == model.config
    assert ARModel.from_checkpoint(path, model="ar_tiny").config == model.config
    with_heads = ARModel.from_checkpoint(path, model={"num_heads": 8, "grid_size": 8})
    assert (with_heads.config.num_heads, with_heads.config.grid_size, with_heads.config.dim) == (8, 8, 64)

    loaded_tokenizer = Tokenizer.from_checkpoint(path)  # the embedded first_stage_model.*
    assert_same_state(loaded_tokenizer, tokenizer)
    assert loaded_tokenizer.hparams["bit_order"] == "lsb_first"


def test_missing_and_unexpected_keys_are_named(tmp_path) -> None:
    checkpoint = {"state_dict": {"transformer." + k: v for k, v in random_tiny().state_dict().items()}}
    del checkpoint["state_dict"]["transformer.norm.weight"]
    checkpoint["state_dict"]["transformer.spatial_blocks.0.attention.kv_cache.k_cache"] = torch.zeros(1)
    path = tmp_path / "broken.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(KeyError, match=r"1 missing key\(s\) \['norm.weight'\] and 1 unexpected key\(s\) "
                                       r"\['spatial_blocks.0.attention.kv_cache.k_cache'\]"):
        ARModel.from_checkpoint(path, model="ar_tiny")
    narrow = ARModel(**{**ar_model_config("ar_tiny").to_dict(), "dim": 32})
    torch.save({"state_dict": {"transformer." + k: v for k, v in narrow.state_dict().items()}}, path)
    with pytest.raises(ValueError, match="no conf/ar_model config has the weights' sizes"):
        ARModel.from_checkpoint(path)
    with pytest.raises(ValueError, match="no transformer"):
        torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(1)}}, path)
        ARModel.from_checkpoint(path)


def test_our_checkpoint_round_trips_with_its_hyper_parameters(tmp_path) -> None:
    torch.manual_seed(0)
    model = ARModel(dim=32, num_heads=2, spatial_layers=1, factorized_layers=1, factorized_bits=[18],
                    num_classes=3, grid_size=2, ffn_multiple_of=8)
    path = tmp_path / "ours.pt"
    torch.save(model.checkpoint(), path)
    loaded = ARModel.from_checkpoint(path)
    assert loaded.config == model.config and not hasattr(loaded, "post_emb")
    assert_same_state(loaded, model)


def test_configs_are_the_yaml_files_and_validate() -> None:
    assert set(ar_model_names()) >= {"ar_b", "ar_l", "ar_xl", "ar_tiny"}
    b = ar_model_config("ar_b")
    assert (b.dim, b.num_heads, b.spatial_layers, b.factorized_layers, b.factorized_bits) == (1024, 16, 24, 2, [6, 12])
    assert ARModelConfig() == b  # the dataclass defaults are the released B model
    assert (ar_model_config("ar_xl").dim, ar_model_config("ar_l").factorized_layers) == (1536, 3)
    with pytest.raises(ValueError, match="unknown AR model"):
        ar_model_config("ar_huge")
    with pytest.raises(ValueError, match="unknown ar_model key"):
        ARModelConfig.from_mapping({"n_head": 8})
    with pytest.raises(ValueError, match="multiple of ar_model.num_heads"):
        ARModelConfig(dim=100, num_heads=16)
    with pytest.raises(ValueError, match="one or two positive bit counts"):
        ARModelConfig(factorized_bits=[6, 6, 6])
    with pytest.raises(ValueError, match="class_dropout"):
        ARModelConfig(class_dropout=1.0)
