"""Checkpoint files survive damage, kills and full disks: checksums, moving bad files aside, stale temp files."""
from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from openmagvit2.io.atomic import atomic_write, default_file_mode
from openmagvit2.io.safe_load import CorruptCheckpointError
from openmagvit2.train import checkpoint
from openmagvit2.train.checkpoint import DiskFullError


def state(step: int, numel: int = 10_000) -> dict:
    generator = torch.Generator().manual_seed(step)
    return {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "step": step,
            "generator": {"encoder.w": torch.randn(numel, generator=generator)}}


def save_steps(run_dir: Path, steps: list[int], numel: int = 10_000) -> list[Path]:
    paths = []
    for step in steps:
        path = checkpoint.checkpoint_path(run_dir, step)
        checkpoint.save_atomically(state(step, numel), path)
        paths.append(path)
    return paths


def flip_a_byte(path: Path, offset_from_end: int = 2000) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0x10
    path.write_bytes(bytes(data))


def leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in checkpoint.checkpoint_dir(run_dir).iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def umask_002():
    previous = os.umask(0o002)
    yield
    os.umask(previous)


def test_saved_checkpoint_has_a_checksum_and_the_umask_permissions(tmp_path: Path, umask_002) -> None:
    (path,) = save_steps(tmp_path, [1])
    sidecar = checkpoint.checksum_path(path)
    digest, name = sidecar.read_text().split()
    assert name == path.name and len(digest) == 64
    assert subprocess.run(["sha256sum", "-c", sidecar.name], cwd=path.parent, capture_output=True).returncode == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o664 == default_file_mode()  # mkstemp alone gives 0600
    assert stat.S_IMODE(sidecar.stat().st_mode) == 0o664
    assert checkpoint.verify_checksum(path) is True
    assert torch.equal(checkpoint.load(path)["generator"]["encoder.w"], state(1)["generator"]["encoder.w"])


def test_atomic_write_is_shared_by_shards_and_weights_and_cleans_up_on_error(tmp_path: Path, umask_002) -> None:
    import openmagvit2.data.make_shards as make_shards
    import openmagvit2.weights as weights

    assert make_shards.atomic_write is atomic_write and weights.atomic_write is atomic_write
    make_shards.write_json_atomic(str(tmp_path / "index.json"), {"a": 1})
    assert stat.S_IMODE((tmp_path / "index.json").stat().st_mode) == 0o664
    with pytest.raises(RuntimeError, match="checksum"):
        with atomic_write(tmp_path / "weights.pth") as handle:
            handle.write(b"partial")
            raise RuntimeError("checksum differs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "bit_flip"])
def test_damaged_checkpoints_raise_an_error_naming_the_file(tmp_path: Path, damage: str) -> None:
    (path,) = save_steps(tmp_path, [3])
    data = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    else:
        flip_a_byte(path)
    with pytest.raises(CorruptCheckpointError, match=rf"{path.name}.*use another checkpoint"):
        checkpoint.load(path)


def test_a_bit_flip_loads_silently_without_the_checksum(tmp_path: Path) -> None:
    """Why the sidecar exists: torch.load does not check the zip CRCs, so a flipped tensor byte goes unnoticed."""
    (path,) = save_steps(tmp_path, [3])
    flip_a_byte(path)
    checkpoint.checksum_path(path).unlink()
    loaded = checkpoint.load(path)["generator"]["encoder.w"]
    assert not torch.equal(loaded, state(3)["generator"]["encoder.w"])


def test_load_latest_good_moves_damaged_checkpoints_aside_newest_first(tmp_path: Path) -> None:
    first, second, third = save_steps(tmp_path, [1, 2, 3])
    third.write_bytes(third.read_bytes()[:100])
    flip_a_byte(second)
    lines: list[str] = []
    assert checkpoint.latest_verified(tmp_path) == first
    path, loaded = checkpoint.load_latest_good(tmp_path, move_aside=False)  # other ranks: same answer, no renames
    assert path == first and loaded["step"] == 1 and checkpoint.list_checkpoints(tmp_path) == [first, second, third]
    path, loaded = checkpoint.load_latest_good(tmp_path, lines.append)
    assert path == first and loaded["step"] == 1
    assert checkpoint.list_checkpoints(tmp_path) == [first]
    assert (third.parent / "step_00000003.pt.corrupt").exists()
    assert (second.parent / "step_00000002.pt.corrupt").exists()
    assert len(lines) == 2 and "step_00000003.pt" in lines[0] and "step_00000002.pt" in lines[1]
    assert all("\n" not in line and "moved it aside" in line.lower() for line in lines)
    first.write_bytes(b"")
    assert checkpoint.load_latest_good(tmp_path, lines.append) is None
    assert checkpoint.latest_verified(tmp_path) is None


def test_stale_temp_files_and_orphan_checksums_are_removed(tmp_path: Path) -> None:
    (kept,) = save_steps(tmp_path, [1])
    folder = kept.parent
    (folder / ".step_00000002.pt.k3j4h5.tmp").write_bytes(b"x" * 5000)
    (folder / ".step_00000002.pt.sha256.a1b2c3.tmp").write_bytes(b"y" * 10)
    (folder / "step_00000002.pt.sha256").write_text("0" * 64 + "  step_00000002.pt\n")  # renamed, its file was not
    (folder / "notes.tmp").write_text("not ours")
    assert checkpoint.remove_stale_temp_files(tmp_path) == 5000 + 10 + 83
    assert sorted(p.name for p in folder.iterdir()) == ["notes.tmp", kept.name, checkpoint.checksum_path(kept).name]
    assert checkpoint.remove_stale_temp_files(tmp_path / "nowhere") == 0


def test_a_full_disk_becomes_a_sentence_and_loses_nothing(tmp_path: Path, monkeypatch) -> None:
    (previous,) = save_steps(tmp_path, [1], numel=100_000)
    original_write = checkpoint._HashingWriter.write

    def write_until_full(self, data):
        if getattr(self, "written", 0) + len(data) > 50_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written = getattr(self, "written", 0) + len(data)
        return original_write(self, data)

    monkeypatch.setattr(checkpoint._HashingWriter, "write", write_until_full)
    with pytest.raises(DiskFullError, match=rf"could not save step_00000002.pt: the disk holding "
                                            rf"{previous.parent} is full .* MB free, the checkpoint needs about "
                                            rf"0.4 MB\); free some space or lower train.keep_last"):
        checkpoint.save_atomically(state(2, 100_000), checkpoint.checkpoint_path(tmp_path, 2))
    assert checkpoint.list_checkpoints(tmp_path) == [previous] and leftovers(tmp_path) == []
    assert not checkpoint.checksum_path(checkpoint.checkpoint_path(tmp_path, 2)).exists()
    assert checkpoint.load(previous)["step"] == 1


def test_torchs_unexpected_pos_error_is_reported_as_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    def torch_save_on_a_full_disk(obj, handle):
        handle.write(b"PK\x03\x04")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662")

    monkeypatch.setattr(checkpoint.torch, "save", torch_save_on_a_full_disk)
    with pytest.raises(DiskFullError, match="is full"):
        checkpoint.save_atomically(state(1), checkpoint.checkpoint_path(tmp_path, 1))
    assert checkpoint.list_checkpoints(tmp_path) == [] and leftovers(tmp_path) == []


def test_short_of_space_the_checkpoints_keep_last_would_drop_go_first(tmp_path: Path, monkeypatch) -> None:
    first, second, third = save_steps(tmp_path, [1, 2, 3])
    free = {"bytes": 0}
    monkeypatch.setattr(checkpoint, "_free_bytes", lambda folder: free["bytes"])
    original_remove = checkpoint._remove_checkpoint

    def remove_and_free(path):
        original_remove(path)
        free["bytes"] += 10**9 if path == second else 0

    monkeypatch.setattr(checkpoint, "_remove_checkpoint", remove_and_free)
    checkpoint.save_atomically(state(4), checkpoint.checkpoint_path(tmp_path, 4), keep_last=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_00000003.pt", "step_00000004.pt"]
    free["bytes"] = 0
    checkpoint.save_atomically(state(5), checkpoint.checkpoint_path(tmp_path, 5), keep_last=1)
    # keep_last=1 would delete step 4 only after step 5 exists: never before.
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_00000004.pt", "step_00000005.pt"]


def test_a_real_full_disk_on_a_small_tmpfs(tmp_path: Path) -> None:
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        (previous,) = save_steps(mount_point, [1], numel=400_000)  # 1.6 MB
        with pytest.raises(DiskFullError, match="is full"):
            checkpoint.save_atomically(state(2, 400_000), checkpoint.checkpoint_path(mount_point, 2), keep_last=1)
        assert checkpoint.list_checkpoints(mount_point) == [previous] and leftovers(mount_point) == []
        assert checkpoint.load(previous)["step"] == 1
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


KILLED_SAVER = textwrap.dedent("""
    import sys, time
    import torch
    from openmagvit2.train import checkpoint

    run_dir = sys.argv[1]
    checkpoint.save_atomically({"format": "openmagvit2", "step": 1, "w": torch.ones(1000)},
                               checkpoint.checkpoint_path(run_dir, 1))
    original_write = checkpoint._HashingWriter.write

    def slow_write(self, data):  # a slow disk: the kill lands in the middle of the file
        result = original_write(self, data)
        time.sleep(0.05)
        return result

    checkpoint._HashingWriter.write = slow_write
    print("saving", flush=True)
    while True:
        checkpoint.save_atomically({"format": "openmagvit2", "step": 2, "w": torch.randn(4_000_000)},
                                   checkpoint.checkpoint_path(run_dir, 2))
""")


def test_kill_9_mid_save_keeps_the_previous_checkpoint_and_start_up_cleans_the_temp_file(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    saver = subprocess.Popen([sys.executable, "-c", KILLED_SAVER, str(tmp_path)], env=env, stdout=subprocess.PIPE)
    try:
        assert saver.stdout.readline().strip() == b"saving"
        deadline = time.monotonic() + 60
        temp = []
        while time.monotonic() < deadline:
            temp = [p for p in checkpoint.checkpoint_dir(tmp_path).glob(".step_00000002.pt.*.tmp")
                    if p.stat().st_size > 100_000]
            if temp:
                break
            time.sleep(0.02)
        assert temp, "the saver never started writing"
    finally:
        saver.send_signal(signal.SIGKILL)
        saver.wait(timeout=30)
    assert saver.returncode == -signal.SIGKILL
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_00000001.pt"]
    assert checkpoint.remove_stale_temp_files(tmp_path) > 100_000
    assert leftovers(tmp_path) == []
    path, loaded = checkpoint.load_latest_good(tmp_path)
    assert path.name == "step_00000001.pt" and loaded["step"] == 1


@pytest.mark.slow
def test_train_resume_auto_skips_a_damaged_newest_checkpoint_and_reclaims_temp_files(tmp_path: Path) -> None:
    from conftest import FAST, compose_config
    from openmagvit2.config import validate_config
    from train import train

    def run(max_steps: int) -> int:
        cfg = compose_config(FAST + [f"train.max_steps={max_steps}", "train.ckpt_every=1",
                                               "train.keep_last=0"])
        validate_config(cfg)
        return train(cfg, tmp_path)

    assert run(2) == 0
    newest = checkpoint.checkpoint_path(tmp_path, 2)
    newest.write_bytes(newest.read_bytes()[:1000])  # e.g. the node died while the file system flushed it
    (newest.parent / ".step_00000003.pt.x1y2z3.tmp").write_bytes(b"\0" * 2**20)
    assert run(3) == 0
    log = (tmp_path / "train.log").read_text()
    assert "removed 1.0 MB of temporary files left by interrupted checkpoint saves" in log
    assert "step_00000002.pt is damaged" in log and "Moved it aside to step_00000002.pt.corrupt" in log
    assert f"resumed from {checkpoint.checkpoint_path(tmp_path, 1)} at step 1" in log
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [f"step_0000000{i}.pt" for i in (1, 2, 3)]
    assert checkpoint.latest_verified(tmp_path) == checkpoint.checkpoint_path(tmp_path, 3)
