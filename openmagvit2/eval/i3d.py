"""The network FVD is defined with: Inception-v1 I3D trained on Kinetics-400, with VideoGPT's converted weights.

Hand-written because no maintained pip package ships this network with a loader for VideoGPT's file
`i3d_pretrained_400.pt`, the one the VideoGPT, TATS and Open-MAGVIT2 FVD scripts load (`openmagvit2.weights`,
name `i3d_400`). Module names follow that file, so `state_dict()` keys and shapes are its keys
(`Conv3d_1a_7x7.conv3d.weight`, `Mixed_3b.b1b.bn.running_var`, `logits.conv3d.bias`, ...) and it loads strictly.
Behaviour follows the reference `pytorch_i3d.py` (Carreira & Zisserman 2017, piergiaj's port):

- TensorFlow "SAME" padding, computed from each input's size before every convolution and max-pool (zeros, the
  smaller half in front); the convolutions themselves pad nothing. BatchNorm eps 1e-5, then ReLU.
- Head: average pool (2, 7, 7) with stride 1 over the `ceil(t/8) x 7 x 7` map of Mixed_5c, a 1x1x1 convolution to
  400 logits, mean over the remaining time steps: `b 400`, the FVD embedding (no softmax).
- No dropout layer: the network is only used frozen in eval mode, where the reference's dropout is the identity.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from openmagvit2 import weights
from openmagvit2.io.safe_load import CheckpointError, read_checkpoint

WEIGHTS_NAME = "i3d_400"  # the `openmagvit2.weights.WEIGHTS` entry of VideoGPT's file
I3D_SIZE = 224  # frame size the network is trained at; the 7x7 head pool needs exactly this
I3D_FEATURES = 400  # Kinetics-400 logits
# Time shrinks by 8 (three stride-2 stages, each ceil(t/2)); the head pools 2 steps, so ceil(t/8) >= 2.
MIN_FRAMES = 9

# Inception blocks in order: name -> widths of (1x1, 3x3 reduce, 3x3, 3x3 reduce, 3x3, pool projection); the block's output
# is the concatenation of branches 0, 1b, 2b and 3b.
INCEPTION_WIDTHS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32), "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64), "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64), "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128), "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# The stride-2 max-pools between the stages: block -> (name, kernel) of the pool just before it.
POOL_BEFORE = {"Mixed_4b": ("MaxPool3d_4a_3x3", 3), "Mixed_5b": ("MaxPool3d_5a_2x2", 2)}


def _triple(value: int | tuple[int, ...]) -> tuple[int, int, int]:
    return (value,) * 3 if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


def pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    """Zero-pad `b c t h w` as TensorFlow's "SAME" does for this window and stride (the extra element at the back)."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):  # F.pad wants w, h, t
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d with "SAME" padding, then BatchNorm and ReLU; the logits unit has a bias and neither of the two."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, *,
                 logits: bool = False) -> None:
        super().__init__()
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, padding=0, bias=logits)
        self.bn = None if logits else nn.BatchNorm3d(out_channels, eps=1e-5, momentum=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(pad_same(x, self.conv3d.kernel_size, self.conv3d.stride))
        return x if self.bn is None else F.relu(self.bn(x))


class MaxPool3dSame(nn.MaxPool3d):
    """Max-pool with "SAME" padding. Zeros, as in the reference: its inputs follow a ReLU, so zeros never win."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(pad_same(x, _triple(self.kernel_size), _triple(self.stride)))


class InceptionBlock(nn.Module):
    """Four parallel branches (1x1; 1x1 -> 3x3; 1x1 -> 3x3; 3x3 max-pool -> 1x1) concatenated along channels."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(in_channels, w0)
        self.b1a, self.b1b = Unit3D(in_channels, w1a), Unit3D(w1a, w1b, 3)
        self.b2a, self.b2b = Unit3D(in_channels, w2a), Unit3D(w2a, w2b, 3)
        self.b3a, self.b3b = MaxPool3dSame(3, stride=1), Unit3D(in_channels, w3b)
        self.out_channels = w0 + w1b + w2b + w3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Sequential):
    """Inception-v1 I3D: clips `b 3 t 224 224` in [-1, 1] (t >= 9) -> `b num_classes` logits averaged over time."""

    def __init__(self, num_classes: int = I3D_FEATURES) -> None:
        layers: list[tuple[str, nn.Module]] = [
            ("Conv3d_1a_7x7", Unit3D(3, 64, 7, stride=2)),
            ("MaxPool3d_2a_3x3", MaxPool3dSame((1, 3, 3), stride=(1, 2, 2))),
            ("Conv3d_2b_1x1", Unit3D(64, 64)),
            ("Conv3d_2c_3x3", Unit3D(64, 192, 3)),
            ("MaxPool3d_3a_3x3", MaxPool3dSame((1, 3, 3), stride=(1, 2, 2))),
        ]
        channels = 192
        for name, widths in INCEPTION_WIDTHS.items():
            if name in POOL_BEFORE:
                pool_name, kernel = POOL_BEFORE[name]
                layers.append((pool_name, MaxPool3dSame(kernel, stride=2)))
            block = InceptionBlock(channels, widths)
            layers.append((name, block))
            channels = block.out_channels
        layers += [("avg_pool", nn.AvgPool3d((2, 7, 7), stride=1)),
                   ("logits", Unit3D(channels, num_classes, logits=True))]
        super().__init__(OrderedDict(layers))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.ndim != 5 or clips.shape[1] != 3 or tuple(clips.shape[-2:]) != (I3D_SIZE, I3D_SIZE):
            raise ValueError(f"I3D takes clips (b, 3, t, {I3D_SIZE}, {I3D_SIZE}) in [-1, 1], got {tuple(clips.shape)}; "
                             f"resize the frames with openmagvit2.eval.fvd.prepare_for_i3d.")
        if clips.shape[2] < MIN_FRAMES:
            raise ValueError(f"I3D needs clips of at least {MIN_FRAMES} frames, got {clips.shape[2]}; evaluate rfvd "
                             f"on longer clips (the published protocol uses 17).")
        logits = super().forward(clips)  # b n t' 1 1
        return rearrange(logits, "b n t 1 1 -> b n t").mean(dim=2)


def load_i3d(path: str | Path) -> InceptionI3d:
    """InceptionI3d(400) with the weights of `path` (read safely, loaded strictly), on the CPU, frozen, eval mode.

    Raises `CheckpointError` (one line naming the file) when its keys or shapes are not VideoGPT's layout. BatchNorm's
    `num_batches_tracked` counters may be absent (older torch saved none); they are unused in eval mode.
    """
    path = Path(path)
    model = InceptionI3d()
    state = read_checkpoint(path, what="I3D weights")  # foreign objects come back inert and are refused below
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise CheckpointError(f"I3D weights {path} are not a state dict of tensors; use VideoGPT's "
                              f"i3d_pretrained_400.pt (`python -m openmagvit2.weights download {WEIGHTS_NAME}`).")
    expected = model.state_dict()
    counters = {key: value for key, value in expected.items() if key.endswith("num_batches_tracked")}
    state = {**{key: value for key, value in counters.items() if key not in state}, **state}
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong = [f"{key} {tuple(state[key].shape)} vs {tuple(value.shape)}" for key, value in expected.items()
             if key in state and state[key].shape != value.shape]
    if missing or unexpected or wrong:
        found = [f"{len(keys)} {what} (first: {keys[0]})" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape, file vs model", wrong)) if keys]
        raise CheckpointError(f"I3D weights {path} do not fit InceptionI3d(400): {'; '.join(found)}; use VideoGPT's "
                              f"i3d_pretrained_400.pt (`python -m openmagvit2.weights download {WEIGHTS_NAME}`).")
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


@lru_cache(maxsize=None)
def build_i3d(device: str) -> InceptionI3d:
    """The pretrained I3D on `device` (cached: the trainer evaluates repeatedly); `MissingWeightsError` if absent."""
    return load_i3d(weights.locate(WEIGHTS_NAME)).to(device)
