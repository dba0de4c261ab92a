"""No loader runs code from a file: hostile pickles are refused everywhere, benign Lightning objects stay inert."""
from __future__ import annotations

import argparse
import io
import os
import pathlib
import pickle
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_entry_point
from openmagvit2 import Tokenizer
from openmagvit2.io.safe_load import (CorruptCheckpointError, ForeignObject, UnsafeCheckpointError, read_checkpoint,
                                      read_checkpoint_bytes)
from openmagvit2.config import model_preset
from openmagvit2.train import checkpoint
from openmagvit2.train.init_from import initialise_from_checkpoint
from openmagvit2.losses import build_discriminator

TINY = model_preset("tiny")


class RunsShell:
    """What an attacker pickles: unpickling it with plain `pickle` runs `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class TouchesFile:
    """The same attack through a global that is on no deny-list (`pathlib.Path.touch`, protocol 4)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


class LightningHyperParameters(dict):
    """Stands in for Lightning's AttributeDict: a dict subclass that exists only in the training code."""


class ModelCheckpointCallback:
    def __init__(self) -> None:
        self.monitor, self.best_model_score = "val/rec_loss", torch.tensor(0.25)


def released_file(tokenizer: Tokenizer, **extra) -> dict:
    state = {key: value.clone() for key, value in tokenizer.state_dict().items()}
    state["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4)
    return {"state_dict": state, "epoch": 3, "global_step": 15015, **extra}


def save(obj, path: Path, kind: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "zip":
        torch.save(obj, path)
    elif kind == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as handle:
            pickle.dump(obj, handle)
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "code from the checkpoint ran"


@pytest.mark.parametrize("kind", ["zip", "legacy", "plain_pickle"])
def test_a_hostile_checkpoint_is_refused_by_every_loader_and_runs_nothing(tmp_path: Path, marker: Path,
                                                                          kind: str) -> None:
    torch.manual_seed(0)
    # The payload comes first: a plain pickle's tensors (torch.storage._load_from_bytes) are refused on their own.
    hostile = {"hyper_parameters": RunsShell(marker), **released_file(Tokenizer(**TINY))}
    path = save(hostile, tmp_path / "hostile.ckpt", kind)
    with pytest.raises(UnsafeCheckpointError, match=r"hostile\.ckpt: its pickle calls posix\.system"):
        Tokenizer.from_checkpoint(path, model="tiny")
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        initialise_from_checkpoint(path, Tokenizer(**TINY), build_discriminator({}))
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        checkpoint.load(path)  # train.resume=<file>
    ours = {"format": checkpoint.FORMAT, "step": 1, "rng": [RunsShell(marker)]}
    save(ours, checkpoint.checkpoint_path(tmp_path / "run", 1), kind)
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        checkpoint.load_latest_good(tmp_path / "run")  # train.resume=auto: a planted file stops the run
    assert checkpoint.checkpoint_path(tmp_path / "run", 1).exists()  # refused, not moved aside as if damaged


def test_plain_pickled_tensors_are_refused_not_rebuilt(tmp_path: Path) -> None:
    path = save({"encoder.conv_in.weight": torch.zeros(2)}, tmp_path / "plain.pkl", "plain_pickle")
    with pytest.raises(UnsafeCheckpointError, match=r"_rebuild_tensor_v2 would be called with a foreign object"):
        read_checkpoint(path)


def test_gathered_bytes_with_a_hostile_object_are_refused(marker: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"torch": torch.get_rng_state(), "evil": RunsShell(marker)}, buffer)
    with pytest.raises(UnsafeCheckpointError, match="rank 1"):
        read_checkpoint_bytes(buffer.getvalue(), "the object gathered from rank 1")
    buffer = io.BytesIO()
    torch.save({"python": (3, (1, 2), None), "torch": torch.get_rng_state()}, buffer)
    assert torch.equal(read_checkpoint_bytes(buffer.getvalue(), "rank 0")["torch"], torch.get_rng_state())


def test_a_global_on_no_deny_list_stays_an_inert_placeholder(tmp_path: Path, marker: Path) -> None:
    torch.manual_seed(0)
    tokenizer = Tokenizer(**TINY)
    path = tmp_path / "sneaky.ckpt"
    torch.save(released_file(tokenizer, hyper_parameters=TouchesFile(marker)), path, pickle_protocol=4)
    loaded = Tokenizer.from_checkpoint(path, model="tiny")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in tokenizer.state_dict().items())
    placeholder = read_checkpoint(path)["hyper_parameters"]
    assert isinstance(placeholder, ForeignObject) and placeholder.qualified_name == "pathlib.Path.touch"


def test_a_lightning_file_with_foreign_objects_loads_and_keeps_them_inert(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tokenizer = Tokenizer(**TINY)
    hparams = LightningHyperParameters(lr=1e-4, ddconfig={"ch": 32, "ch_mult": [1, 2, 2]})
    path = tmp_path / "lightning.ckpt"
    torch.save(released_file(tokenizer, hyper_parameters=hparams, args=argparse.Namespace(batch_size=8),
                             callbacks={"ModelCheckpoint{'monitor': 'val/rec_loss'}": ModelCheckpointCallback()},
                             pytorch_lightning_version="2.1.0"), path)
    loaded = Tokenizer.from_checkpoint(path, model="tiny", use_ema=False)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in tokenizer.state_dict().items())
    raw = read_checkpoint(path)
    assert raw["hyper_parameters"].items == {"lr": 1e-4, "ddconfig": {"ch": 32, "ch_mult": [1, 2, 2]}}
    assert raw["args"].qualified_name == "argparse.Namespace" and raw["args"].state == {"batch_size": 8}
    callback = next(iter(raw["callbacks"].values()))
    assert callback.state["monitor"] == "val/rec_loss" and torch.equal(callback.state["best_model_score"],
                                                                        torch.tensor(0.25))
    with pytest.raises(TypeError):
        Tokenizer.from_checkpoint(path, model="tiny", weights_only=False)  # no way to ask for full unpickling


class TaggedTensor(torch.Tensor):
    """A tensor subclass: torch pickles it through `_rebuild_from_type_v2`, which calls back into the file's names."""


def test_tensor_types_the_reader_does_not_rebuild_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "subclass.ckpt"
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(2).as_subclass(TaggedTensor)},
                "callbacks": {"x": ModelCheckpointCallback()}}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"tensor type .*_rebuild_from_type_v2"):
        read_checkpoint(path)
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    scripted.save(str(tmp_path / "scripted.pt"))
    with pytest.raises(UnsafeCheckpointError, match="TorchScript"):
        read_checkpoint(tmp_path / "scripted.pt")


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, b"PK\x03\x04 truncated zip"])
def test_damaged_files_are_named_as_damaged(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(CorruptCheckpointError, match=r"bad\.pt (is empty|is damaged)"):
        read_checkpoint(tmp_path / "bad.pt")


@pytest.mark.slow
def test_eval_py_refuses_a_hostile_checkpoint_in_one_line(tmp_path: Path, marker: Path) -> None:
    torch.manual_seed(0)
    path = save(released_file(Tokenizer(**TINY), hyper_parameters=RunsShell(marker)), tmp_path / "hostile.ckpt",
                "zip")
    result = run_entry_point([str(ROOT / "eval.py"), f"ckpt={path}", "metrics=[psnr]", "device=cpu",
                              f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "refusing checkpoint" in lines[0] and "posix.system" in lines[0], result.stderr


def test_old_tar_format_files_are_refused_before_anything_is_extracted(tmp_path: Path) -> None:
    import tarfile

    (tmp_path / "storages").write_bytes(b"\0" * 16)
    with tarfile.open(tmp_path / "old.pt", "w") as archive:
        archive.add(tmp_path / "storages", arcname="storages")
    with pytest.raises(UnsafeCheckpointError, match="tar-format file from torch < 0.4"):
        read_checkpoint(tmp_path / "old.pt")


def test_forced_weights_only_refuses_foreign_objects(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {}, "args": argparse.Namespace(batch_size=8)}, path)
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(UnsafeCheckpointError, match="holds Python objects besides tensors"):
        read_checkpoint(path)


def _gather_worker(rank: int, world_size: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from openmagvit2.train.distributed import DistributedContext, gather_objects

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        ctx = DistributedContext(rank=rank, world_size=world_size, local_rank=rank, device=torch.device("cpu"))
        # Different sizes per rank: the padded byte exchange must cut each one back to its own length.
        gathered = gather_objects({"rank": rank, "python": (3, tuple(range(rank * 50)), None),
                                   "torch": torch.full((rank + 1,), float(rank))}, ctx)
        torch.save(gathered, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gather_objects_exchanges_bytes_without_pickle(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_gather_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        gathered = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert [item["rank"] for item in gathered] == [0, 1]
        assert [len(item["python"][1]) for item in gathered] == [0, 50]
        assert [item["torch"].tolist() for item in gathered] == [[0.0], [1.0, 1.0]]


@pytest.mark.slow
def test_eval_py_refuses_a_model_that_does_not_fit_the_file_in_one_line(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = save(released_file(Tokenizer(**{**TINY, "adaptive_norm": True})), tmp_path / "v3_like.ckpt", "zip")
    result = run_entry_point([str(ROOT / "eval.py"), f"ckpt={path}", "model=tiny", "metrics=[psnr]", "device=cpu",
                              f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "does not fit model=tiny" in lines[0] and "adaptive_norm=True" in lines[0], lines


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\x80\x02ctorch.nn.parameter\nParameter\n}b.", "setting the state of"),  # BUILD on a class: monkey-patching
    (b"\x80\x02cmymod\nfactory\n)R)R.", "a call of mymod.factory"),  # calling what a placeholder returned
    (b"\x80\x02ccollections\nOrderedDict\n)RK\x01a.", "appending to"),
    (b"\x80\x02X\x03\x00\x00\x00abcQ.", "persistent id"),
    (b"\x80\x02cbuiltins\ngetattr\n.", "builtins.getattr"),
    # A parameter with backward hooks (callables), next to a foreign global so that torch's own loader defers to ours.
    (b"\x80\x02(cmymod\nthing\nctorch._utils\n_rebuild_parameter\n(K\x00\x88}K\x00K\x01stRt.", "backward hooks"),
])
def test_crafted_pickles_that_would_do_more_than_build_data_are_refused(tmp_path: Path, payload: bytes,
                                                                        reason: str) -> None:
    (tmp_path / "crafted.pt").write_bytes(payload)
    with pytest.raises(UnsafeCheckpointError, match=reason):
        read_checkpoint(tmp_path / "crafted.pt")


def test_no_code_outside_the_safe_reader_unpickles() -> None:
    """Every read goes through openmagvit2.io.safe_load: a new `torch.load` or `pickle.load` elsewhere fails here."""
    patterns = ("torch.load(", "pickle.load", "pickle.Unpickler", "all_gather_object(", "weights_only=False")
    sources = [*ROOT.glob("*.py"), *(ROOT / "openmagvit2").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
    offenders = [f"{path.relative_to(ROOT)}: {pattern}" for path in sources
                 if path.name not in ("safe_load.py", "restricted_pickle.py")
                 for pattern in patterns if pattern in path.read_text()]
    assert offenders == []
