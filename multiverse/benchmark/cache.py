"""Cache keys for the baselines a benchmark builds once (optimum's graphs, OpenVINO's IR)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def checkpoint_hash(checkpoint: Path) -> str:
    """16 hex characters from the names, sizes (bytes) and mtimes (s) of the files in a checkpoint folder:
    a rebuilt or replaced checkpoint gets a new key without reading its weights."""
    h = hashlib.sha256()
    for f in sorted(Path(checkpoint).iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]
