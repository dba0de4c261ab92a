"""SHA-256 of a file (or of a folder's files): checkpoint sidecars, downloaded weights, the tokenizer a token set
was made with. Standard library only."""
from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK_BYTES = 1 << 22


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, or of a folder (e.g. a `save_pretrained` one): its files' names and bytes, sorted."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode("utf-8") + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
                digest.update(block)
    return digest.hexdigest()
