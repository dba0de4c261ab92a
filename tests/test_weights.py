"""The pretrained-weights registry: paths the libraries really read, the missing-file message, checked downloads."""
from __future__ import annotations

import dataclasses
import hashlib
import urllib.request
import warnings

import pytest
import torch

from openmagvit2 import weights


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME, clean-fid's /tmp copy redirected, and no network: what an offline cluster looks like."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    spec = weights.WEIGHTS["inception_clean"]
    monkeypatch.setitem(weights.WEIGHTS, "inception_clean",
                        dataclasses.replace(spec, also_found_in=(tmp_path / "cleanfid_tmp",)))

    def no_network(*args, **kwargs):
        raise AssertionError("the test tried to download a file")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return home


def test_paths_follow_torch_home(torch_home):
    for spec in weights.WEIGHTS.values():
        assert spec.path == torch_home / "hub" / "checkpoints" / spec.filename


def test_missing_message_names_every_file_and_its_destination(torch_home):
    with pytest.raises(weights.MissingWeightsError) as error:
        weights.require(["lpips_vgg", "inception_clean", "lpips_alex"])
    message = str(error.value)
    assert isinstance(error.value, RuntimeError)
    assert message.startswith("3 pretrained weight file(s) are missing")
    for name in ("lpips_vgg", "inception_clean", "lpips_alex"):
        spec = weights.WEIGHTS[name]
        assert f"put {spec.filename} at {torch_home / 'hub' / 'checkpoints' / spec.filename}" in message
    assert "make weights" in message
    assert "inception_legacy" not in message


def test_require_passes_once_files_are_in_place(torch_home, tmp_path):
    path = weights.WEIGHTS["lpips_vgg"].path
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    weights.require(["lpips_vgg"])
    with pytest.raises(weights.MissingWeightsError, match="inception_legacy"):
        weights.require(["lpips_vgg", "inception_legacy"])
    # clean-fid's own cache location counts too
    (tmp_path / "cleanfid_tmp").mkdir()
    (tmp_path / "cleanfid_tmp" / "inception-2015-12-05.pt").write_bytes(b"x")
    weights.require(["inception_clean"])
    assert weights.locate("inception_clean") == tmp_path / "cleanfid_tmp" / "inception-2015-12-05.pt"


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="known names are"):
        weights.require(["vgg19"])


def test_urls_are_the_ones_the_libraries_download():
    import cleanfid.downloads_helper
    import cleanfid.inception_pytorch
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    assert weights.WEIGHTS["lpips_vgg"].url == VGG16_Weights.IMAGENET1K_V1.url
    assert weights.WEIGHTS["lpips_alex"].url == AlexNet_Weights.IMAGENET1K_V1.url
    assert weights.WEIGHTS["inception_legacy"].url == cleanfid.inception_pytorch.FID_WEIGHTS_URL
    assert weights.WEIGHTS["inception_clean"].url == cleanfid.downloads_helper.inception_url
    # VideoGPT's download.py fetches the I3D file by Google Drive id, so its URL carries no file name
    assert weights.WEIGHTS["i3d_400"].url.endswith("id=1mQK8KD8G6UWRa5t87SRMm5PVXtlpneJT")
    for spec in weights.WEIGHTS.values():
        if spec.name == "i3d_400":
            continue
        assert spec.url.endswith("/" + spec.filename)
        # torch.hub's naming convention: the hash in a file name is a prefix of its SHA-256
        hash_in_name = spec.filename.rsplit(".", 1)[0].rsplit("-", 1)[-1]
        if len(hash_in_name) == 8 and spec.name != "inception_clean":
            assert spec.sha256.startswith(hash_in_name)


def test_libraries_load_torch_hub_files_from_our_paths_without_network(torch_home):
    """A small stand-in file at our path is what torchvision and clean-fid's loaders return: same directory."""
    import cleanfid.inception_pytorch
    from torchvision.models import VGG16_Weights

    for name, load in (("lpips_vgg", lambda: VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=False)),
                       ("inception_legacy", lambda: cleanfid.inception_pytorch.load_state_dict_from_url(
                           cleanfid.inception_pytorch.FID_WEIGHTS_URL, progress=False))):
        path = weights.WEIGHTS[name].path
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"marker": torch.tensor([len(name)])}, path)
        assert load()["marker"].item() == len(name)


def test_lpips_package_builds_from_a_file_at_our_path(torch_home):
    """The whole lpips AlexNet model loads its trunk from `lpips_alex`'s path (zero weights, stored compactly)."""
    import lpips
    import torchvision

    with torch.device("meta"):
        shapes = {key: value.shape for key, value in torchvision.models.alexnet().state_dict().items()}
    state = {key: torch.zeros(1).expand(shape) for key, shape in shapes.items()}  # stride-0 views: a tiny file
    path = weights.WEIGHTS["lpips_alex"].path
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", verbose=False)
    assert all(float(p.abs().sum()) == 0 for p in model.net.parameters())  # the trunk came from our file


def test_download_verifies_checksums_and_leaves_nothing_behind_on_mismatch(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    source = tmp_path / "served.pth"
    source.write_bytes(b"pretend weights")
    digest = hashlib.sha256(b"pretend weights").hexdigest()
    good = weights.WeightFile("fake", "fake-1234.pth", source.as_uri(), digest, "test file")
    bad = dataclasses.replace(good, name="corrupt", filename="corrupt.pth", sha256="0" * 64)
    monkeypatch.setitem(weights.WEIGHTS, "fake", good)
    monkeypatch.setitem(weights.WEIGHTS, "corrupt", bad)

    assert weights.download(["fake"]) == [good.path]
    assert good.path.read_bytes() == b"pretend weights"
    weights.require(["fake"])
    with pytest.raises(RuntimeError, match="expected 0000"):
        weights.download(["corrupt"])
    assert sorted(p.name for p in good.path.parent.iterdir()) == ["fake-1234.pth"]
    instructions = weights.copy_instructions([good.path])
    assert "rsync" in instructions and str(good.path) in instructions


def test_check_command_reports_missing_files(torch_home, capsys):
    assert weights._main(["check"]) == 1
    out = capsys.readouterr().out
    assert out.count("MISSING") == len(weights.WEIGHTS)
