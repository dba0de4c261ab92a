"""How results leave the evaluation: a rich table, `metrics.json`, and a markdown row in the seed's results table."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# Names, formats and notes shown for each result key (in this order).
DISPLAY = {
    "rfid": ("rFID", "{:.3f}", "lower is better; Inception features of originals vs reconstructions"),
    "psnr": ("PSNR (dB)", "{:.2f}", "per image on 8-bit images, then averaged (not per batch)"),
    "ssim": ("SSIM", "{:.4f}", "per image on 8-bit images (scikit-image definition), averaged"),
    "lpips_alex": ("LPIPS (AlexNet)", "{:.4f}", "lpips v0.1, per image, averaged"),
    "lpips_vgg": ("LPIPS (VGG)", "{:.4f}", "lpips v0.1, per image, averaged"),
    "usage": ("codebook usage", "{:.2%}", "fraction of codes used at least once"),
    "codes_used": ("codes used", "{:.0f}", "number of distinct codes"),
    "perplexity": ("code perplexity", "{:.1f}", "exp(entropy) of the code histogram"),
    "num_images": ("images", "{:.0f}", "evaluated, each counted once across ranks"),
}
# What changes when the samples are clips (`num_frames` in the results): the per-image metrics are per frame.
CLIP_DISPLAY = {
    "rfvd": ("rFVD", "{:.2f}", "lower is better; I3D (Kinetics-400) logits of original vs reconstructed clips"),
    "psnr": ("PSNR (dB)", "{:.2f}", "per frame on 8-bit frames, averaged over every frame"),
    "ssim": ("SSIM", "{:.4f}", "per frame on 8-bit frames (scikit-image definition), averaged"),
    "lpips_alex": ("LPIPS (AlexNet)", "{:.4f}", "lpips v0.1, per frame, averaged"),
    "lpips_vgg": ("LPIPS (VGG)", "{:.4f}", "lpips v0.1, per frame, averaged"),
    "num_images": ("clips", "{:.0f}", "evaluated, each counted once across ranks"),
    "num_frames": ("frames", "{:.0f}", "in those clips"),
}
SEED_TABLE_HEADER = ("| model | train res | tokens at eval | codebook | rFID | PSNR | usage |\n"
                     "|---|---|---|---|---|---|---|")


def format_value(key: str, value: float, display: dict = DISPLAY) -> str:
    return display[key][1].format(value) if key in display else f"{value:.4g}"


def results_table(results: dict[str, float], title: str, fid_mode: str | None = None) -> Table:
    """A rich table of every result, with what each number means."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("note")
    display = {**DISPLAY, **CLIP_DISPLAY} if "num_frames" in results else DISPLAY
    ordered = [key for key in display if key in results] + sorted(set(results) - set(display))
    for key in ordered:
        label, _, note = display.get(key, (key, "", ""))
        if key == "rfid" and fid_mode is not None:
            note = f"{note} (fid_mode={fid_mode})"
        table.add_row(label, format_value(key, results[key], display), note)
    return table


def print_results(results: dict[str, float], title: str, fid_mode: str | None = None) -> None:
    Console().print(results_table(results, title, fid_mode))


def markdown_row(results: dict[str, float], model: str, train_resolution: int | None, eval_resolution: int,
                 downsample_factor: int, codebook_bits: int) -> str:
    """One row of the seed's table (`| model | train res | tokens at eval | codebook | rFID | PSNR | usage |`)."""
    side = eval_resolution // downsample_factor
    cells = [
        model,
        str(train_resolution) if train_resolution else "?",
        f"{side}×{side} @{eval_resolution}",
        f"2^{codebook_bits}",
        format_value("rfid", results["rfid"]) if "rfid" in results else "–",
        format_value("psnr", results["psnr"]) if "psnr" in results else "–",
        f"{results['usage']:.0%}" if "usage" in results else "–",
    ]
    return "| " + " | ".join(cells) + " |"


def write_metrics_json(path: str | Path, results: dict[str, float], metadata: dict[str, Any]) -> Path:
    """`{"metrics": {...}, **metadata}` as indented JSON (sorted keys, stable diffs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"metrics": results, **metadata}, indent=2, sort_keys=True, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path
