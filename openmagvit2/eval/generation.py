"""gFID, Inception Score and precision/recall of generated samples against an ADM reference batch.

    python -m openmagvit2.eval.generation samples=runs/sample/.../samples.npz ref=VIRTUAL_imagenet256_labeled.npz

Both files are ADM-format `.npz`: `arr_0` uint8 `N H W 3` (samples from `python -m openmagvit2.sample`); the reference
may also hold precomputed Inception statistics `mu` (2048) and `sigma` (2048 x 2048). The definitions are those of
ADM's `evaluations/evaluator.py` (guided-diffusion), which the Open-MAGVIT2 maintainers say they follow (issue #55):

- FID: Frechet distance between the pool_3 features (2048) of the samples and the reference's `mu`/`sigma` when the
  file has them (as ADM's `read_statistics` does), else the statistics of its `arr_0` images
  (`cleanfid.fid.frechet_distance`, the TTUR formula ADM also uses).
- Inception Score: softmax of `pool_3 @ W` (the classifier weights without their bias, as ADM's softmax graph and
  the original improved-GAN code), `exp(E_x KL(p(y|x) || p(y)))` over consecutive splits of 5,000 samples, averaged
  (10 splits for 50k). The splits follow the file's order: `openmagvit2.sample` writes a shuffled file for this.
- Precision / recall (Kynkaenniemi et al. 2019, k = 3, ADM's `ManifoldEstimator`): a point's radius is the squared
  distance to its k-th nearest neighbour within its own set (itself excluded); precision is the fraction of samples
  within the radius of at least one reference point, recall the fraction of reference points within the radius of
  at least one sample. Distances are squared Euclidean in float32 on the device (ADM: float16, float32 on overflow).

Why clean-fid's network and not torch-fidelity: the project already depends on clean-fid and fetches its
TorchScript Inception (`inception-2015-12-05.pt`, registered as `inception_clean` in `openmagvit2/weights.py`, so
`make weights` and the start-up refusal cover it). That file is NVIDIA's direct translation of the TensorFlow graph
ADM's evaluator runs (`classify_image_graph_def.pb` of inception-2015-12-05), including its TF1-style bilinear resize
to 299 (`affine_grid` with the half-pixel shift TF1 lacks) and `(x - 128) / 128`; the images go in at their own size,
as ADM feeds them. It gives pool_3 and the classifier weights, so all three metrics come from one forward pass, and
each is a few lines written to ADM's definitions above; torch-fidelity would add a second Inception port, a second
weight file, and precision/recall on VGG-16 features by default (not ADM's Inception features).
Relation to the TensorFlow ADM evaluator: same network weights, same resize, same formulas; the differences are
float arithmetic (PyTorch/cuDNN vs TF convolutions, TF32 disabled here) and, when the reference's `mu`/`sigma` are
used, that those were computed by TensorFlow. Expect small differences, not bit-identity (not measured here: the
tests use a random feature network). ADM's sFID (spatial mixed_6 features) is not computed.
"""
from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import hydra
import numpy as np
import torch
from einops import rearrange
from omegaconf import DictConfig, OmegaConf

from openmagvit2 import weights
from openmagvit2.errors import ConfigError
from openmagvit2.paths import conf_dir

INCEPTION_WEIGHTS = "inception_clean"
IS_SPLIT_SIZE = 5000  # ADM's compute_inception_score(split_size=5000)
NEIGHBOURHOOD = 3  # ADM's ManifoldEstimator(nhood_sizes=(3,))

# uint8 `b h w 3` images on the device -> (`b d` features, `b c` classifier logits).
FeatureNetwork = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Batch(NamedTuple):
    """An ADM `.npz`: images `n h w 3` uint8 (or None) and optional precomputed FID statistics."""

    images: np.ndarray | None
    mu: np.ndarray | None
    sigma: np.ndarray | None


def read_batch(path: str | Path, what: str) -> Batch:
    """Read an ADM-format `.npz` (no pickles); refuse with one line when `arr_0` is not uint8 `n h w 3`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            images = data["arr_0"] if "arr_0" in data else None
            mu = data["mu"] if "mu" in data else None
            sigma = data["sigma"] if "sigma" in data else None
    except (OSError, ValueError) as error:
        raise ConfigError(f"{what}={path} is not a readable .npz ({error}).") from None
    if images is not None and (images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3):
        raise ConfigError(f"{what}={path}: arr_0 is {images.dtype} {images.shape}, expected uint8 (N, H, W, 3) "
                          f"images as ADM's evaluator reads.")
    if images is None and mu is None:
        raise ConfigError(f"{what}={path} has neither arr_0 (images) nor mu/sigma (statistics).")
    return Batch(images, mu, sigma)


class InceptionNetwork:
    """clean-fid's TorchScript Inception: uint8 `b h w 3` at any size -> pool_3 `b 2048`, logits `b 1008` (no bias)."""

    def __init__(self, device: torch.device) -> None:
        path = weights.locate(INCEPTION_WEIGHTS)
        with warnings.catch_warnings():
            # torch deprecates TorchScript loading; the file exists only as TorchScript (clean-fid loads it so)
            warnings.simplefilter("ignore", FutureWarning)
            self.model = torch.jit.load(str(path), map_location=device).eval()
        # The softmax layer's weights, applied without the bias (ADM's evaluator, improved-GAN's IS code).
        self.classifier = self.model.output.weight

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = rearrange(images, "b h w c -> b c h w").float()
        features = self.model(pixels, return_features=True)  # resizes to 299 (TF1 style) and normalises inside
        return features, features @ self.classifier.T


def extract(images: np.ndarray, network: FeatureNetwork, batch_size: int, device: torch.device
            ) -> tuple[np.ndarray, np.ndarray]:
    """Features `n d` (float64) and logits `n c` (float64) of uint8 `n h w 3` images, in batches."""
    features, logits = [], []
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
            feats, logit = network(batch)
            features.append(feats.double().cpu().numpy())
            logits.append(logit.double().cpu().numpy())
    return np.concatenate(features), np.concatenate(logits)


def frechet_distance(features: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    """FID between the statistics of `n d` features and (mu, sigma) (clean-fid's implementation of the formula)."""
    from cleanfid.fid import frechet_distance as distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # clean-fid passes scipy's deprecated `disp`
        return float(distance(np.mean(features, axis=0), np.cov(features, rowvar=False), mu, sigma))


def inception_score(logits: np.ndarray, split_size: int = IS_SPLIT_SIZE) -> tuple[float, float]:
    """(mean, std) over consecutive splits of `split_size` rows of exp(mean_x KL(softmax(logits_x) || p(y)))."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    scores = []
    for start in range(0, len(logits), split_size):
        part = log_probs[start:start + split_size]
        log_marginal = np.log(np.exp(part).mean(axis=0, keepdims=True))
        scores.append(np.exp(np.mean(np.sum(np.exp(part) * (part - log_marginal), axis=1))))
    return float(np.mean(scores)), float(np.std(scores))


def _squared_distances(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """`r d`, `c d` -> `r c` squared Euclidean distances, ADM's |u|^2 - 2 u.v + |v|^2 clamped at 0."""
    norms_rows = (rows * rows).sum(dim=1, keepdim=True)
    norms_cols = (cols * cols).sum(dim=1)[None]
    return (norms_rows - 2 * rows @ cols.T + norms_cols).clamp_min_(0.0)


def manifold_radii(features: torch.Tensor, k: int = NEIGHBOURHOOD, block: int = 4096) -> torch.Tensor:
    """`n d` -> `n`: squared distance of each point to its k-th nearest neighbour in the set (itself excluded)."""
    if len(features) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} points per set, got {len(features)}.")
    radii = [torch.kthvalue(_squared_distances(features[start:start + block], features), k + 1, dim=1).values
             for start in range(0, len(features), block)]
    return torch.cat(radii)


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int) -> torch.Tensor:
    """`p` bool: whether each point lies within the radius of at least one centre."""
    inside = torch.zeros(len(points), dtype=torch.bool, device=points.device)
    for start in range(0, len(centres), block):
        distances = _squared_distances(points, centres[start:start + block])
        inside |= (distances <= radii[None, start:start + block]).any(dim=1)
    return inside


def precision_recall(reference: np.ndarray, samples: np.ndarray, k: int = NEIGHBOURHOOD,
                     device: torch.device | str = "cpu", block: int = 4096) -> tuple[float, float]:
    """(precision, recall) of `n d` sample features against `m d` reference features (see the module docstring)."""
    ref = torch.as_tensor(reference, dtype=torch.float32, device=device)
    gen = torch.as_tensor(samples, dtype=torch.float32, device=device)
    ref_radii, gen_radii = manifold_radii(ref, k, block), manifold_radii(gen, k, block)
    precision = torch.cat([_covered(gen[s:s + block], ref, ref_radii, block) for s in range(0, len(gen), block)])
    recall = torch.cat([_covered(ref[s:s + block], gen, gen_radii, block) for s in range(0, len(ref), block)])
    return precision.double().mean().item(), recall.double().mean().item()


def generation_metrics(samples: np.ndarray, reference: Batch, network: FeatureNetwork, *, device: torch.device | str =
                       "cpu", batch_size: int = 200, k: int = NEIGHBOURHOOD, is_split_size: int = IS_SPLIT_SIZE,
                       use_reference_statistics: bool = True) -> dict[str, Any]:
    """FID, IS (mean, std over splits), precision and recall of uint8 `n h w 3` samples against `reference`.

    FID uses the reference's `mu`/`sigma` when present and `use_reference_statistics`, else its images; precision
    and recall need its images (None without them).
    """
    device = torch.device(device)
    for what, batch in (("samples", samples), ("reference images", reference.images)):
        if batch is not None and len(batch) <= k:
            raise ConfigError(f"precision/recall with k={k} needs more than {k} {what}, got {len(batch)}.")
    sample_features, sample_logits = extract(samples, network, batch_size, device)
    ref_features = None
    if reference.images is not None:
        ref_features, _ = extract(reference.images, network, batch_size, device)
    if reference.mu is not None and reference.sigma is not None and use_reference_statistics:
        mu, sigma, fid_reference = reference.mu.astype(np.float64), reference.sigma.astype(np.float64), "npz mu/sigma"
    elif ref_features is not None:
        mu, sigma, fid_reference = np.mean(ref_features, 0), np.cov(ref_features, rowvar=False), "reference images"
    else:
        raise ConfigError("the reference has mu/sigma but ref_stats=images was asked and it holds no arr_0 images.")
    if mu.shape != sample_features.shape[1:]:
        raise ConfigError(f"the reference statistics are {mu.shape[0]}-d but the network gives "
                          f"{sample_features.shape[1]}-d features: use a reference made with the FID Inception.")
    is_mean, is_std = inception_score(sample_logits, is_split_size)
    results: dict[str, Any] = {"fid": frechet_distance(sample_features, mu, sigma), "inception_score": is_mean,
                               "inception_score_std": is_std, "precision": None, "recall": None,
                               "num_samples": len(samples), "fid_reference": fid_reference}
    if ref_features is not None:
        results["precision"], results["recall"] = precision_recall(ref_features, sample_features, k, device)
        results["num_reference"] = len(ref_features)
    return results


def validate(cfg: DictConfig) -> None:
    for key in ("samples", "ref"):
        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"{key} is required: python -m openmagvit2.eval.generation samples=<samples.npz> "
                              f"ref=<reference .npz, e.g. VIRTUAL_imagenet256_labeled.npz>.")
        if not Path(cfg[key]).is_file():
            raise ConfigError(f"{key}={cfg[key]} does not exist; pass the path of an ADM-format .npz.")
    if cfg.ref_stats not in ("auto", "images"):
        raise ConfigError(f"ref_stats={cfg.ref_stats} is not allowed; use auto (the file's mu/sigma when present) "
                          f"or images.")
    for key in ("batch_size", "k", "is_split_size"):
        if int(cfg[key]) < 1:
            raise ConfigError(f"{key}={cfg[key]} must be >= 1.")


def run(cfg: DictConfig, network: FeatureNetwork | None = None) -> dict[str, Any]:
    """Validate, refuse missing weights, read both files, compute, write `metrics.json`; returns the metrics."""
    validate(cfg)
    if network is None:
        weights.require([INCEPTION_WEIGHTS])  # before reading gigabytes of images
    from openmagvit2.train.distributed import resolve_device

    device = resolve_device(str(cfg.device), 0)
    samples, reference = read_batch(cfg.samples, "samples"), read_batch(cfg.ref, "ref")
    if samples.images is None:
        raise ConfigError(f"samples={cfg.samples} holds no arr_0 images.")
    network = network if network is not None else InceptionNetwork(device)
    results = generation_metrics(samples.images, reference, network, device=device, batch_size=int(cfg.batch_size),
                                 k=int(cfg.k), is_split_size=int(cfg.is_split_size),
                                 use_reference_statistics=cfg.ref_stats == "auto")
    if cfg.out is not None:
        out = Path(cfg.out)
    else:
        from hydra.core.hydra_config import HydraConfig

        out = Path(HydraConfig.get().runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"metrics": results, "samples": str(Path(cfg.samples).resolve()), "ref": str(Path(cfg.ref).resolve()),
              "k": int(cfg.k), "is_split_size": int(cfg.is_split_size),
              "network": "clean-fid TorchScript Inception (inception-2015-12-05.pt), ADM evaluator definitions"}
    (out / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    for key in ("fid", "inception_score", "precision", "recall"):
        value = results[key]
        print(f"{key:>16}: {'n/a' if value is None else f'{value:.4f}'}")
    print(f"wrote {out / 'metrics.json'}")
    return results


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="eval_generation")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (ConfigError, weights.MissingWeightsError) as error:
        print(f"openmagvit2.eval.generation: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
