"""Convert a video folder (`<split>/<class>/<video>.avi`, e.g. UCF-101 split 1 `train/`) into WebDataset tar shards.

    python -m openmagvit2.data.make_video_shards --src ucf101/train --out shards/ucf101 [--shard-size 100]

writes `<out>/<prefix>-000000.tar` ... and the index `<out>/<prefix>.json`, in the image converter's format
(`make_shards`): each sample holds the video's original encoded bytes under its extension (`.avi`), the class index
(`.cls`) and the source path (`.path`). Videos are stored as they are (the `data=video_wds` loaders decode 17
consecutive frames per clip, `video_clips.ClipDecoder`), shuffled once with `--seed`; shards are written atomically
and a re-run resumes, as `make_shards` does (same plan file, same helpers). Videos whose first frame does not decode
are skipped and counted in the index; videos too short for a clip are kept (the loaders skip and count them).
"""
from __future__ import annotations

import argparse
import json
import os

from .make_shards import (INDEX_FORMAT, INDEX_VERSION, fingerprint, plan_shards, write_json_atomic, write_shard,
                          written_shard)
from .video_clips import scan_video_folder, video_corruption


def convert_videos(src: str, out: str, prefix: str | None = None, shard_size: int = 100, shuffle: bool = True,
                   seed: int = 0) -> dict:
    """Convert `src` into shards under `out` (resuming if possible); returns the index written next to them."""
    if shard_size < 1:
        raise ValueError(f"--shard-size={shard_size} must be at least 1.")
    src = os.path.abspath(src)
    prefix = prefix or os.path.basename(src.rstrip(os.sep))
    listing = scan_video_folder(src, "--src")
    tasks = plan_shards(listing, prefix, shard_size, shuffle, seed)
    os.makedirs(out, exist_ok=True)
    plan_path = os.path.join(out, f"{prefix}.plan.json")
    plan = {"fingerprint": fingerprint(listing, tasks, check=True), "src": src, "shard_size": shard_size,
            "shuffle": shuffle, "seed": seed, "shards": len(tasks), "kind": "video"}
    if os.path.exists(plan_path):
        with open(plan_path, encoding="utf-8") as handle:
            if json.load(handle).get("fingerprint") != plan["fingerprint"]:
                raise ValueError(f"{out} holds '{prefix}' shards made from other inputs or settings ({plan_path}): "
                                 "use a new --out or --prefix, or delete the old shards.")
    write_json_atomic(plan_path, plan)
    counts, skipped = {}, []
    for task in tasks:
        if not os.path.exists(os.path.join(out, task.name)):
            result = write_shard(task, src, out, why_broken=video_corruption)  # broken videos skipped, counted
            skipped += result.skipped
            print(f"[make_video_shards] wrote {task.name} ({result.count} videos, {len(result.skipped)} broken "
                  "skipped)", flush=True)
            counts[task.name] = result.count
        else:
            counts[task.name] = written_shard(task, out).count
    index = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "kind": "video", "src": src, "prefix": prefix,
             "classes": listing.classes, "total": sum(counts.values()), "unlabeled": 0, "shuffled": shuffle,
             "seed": seed, "skipped_corrupt": len(skipped), "skipped": [list(item) for item in skipped[:1000]],
             "shards": [{"name": task.name, "count": counts[task.name], "unlabeled": 0} for task in tasks]}
    write_json_atomic(os.path.join(out, f"{prefix}.json"), index)
    print(f"[make_video_shards] {len(listing)} videos ({len(listing.classes)} classes) in {len(tasks)} shards: "
          f"{os.path.join(out, prefix)}-{{000000..{len(tasks) - 1:06d}}}.tar", flush=True)
    return index


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="folder of <class>/<video>.avi files")
    parser.add_argument("--out", required=True, help="output folder for the shards and the index")
    parser.add_argument("--prefix", default=None, help="shard name prefix (default: the source folder's name)")
    parser.add_argument("--shard-size", type=int, default=100, help="videos per shard (UCF-101: ~0.5 MB each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-shuffle", action="store_true")
    args = parser.parse_args(argv)
    convert_videos(args.src, args.out, args.prefix, args.shard_size, not args.no_shuffle, args.seed)


if __name__ == "__main__":
    main()
