"""Decode images ONCE and cache them as uint8 arrays at training resolution."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from mlcore.framing import DEFAULT_FRAMING
from mlcore.imageio import RESIZE_METHOD, decode_file
from mlcore.preprocess import prepare_image
from .parallel import counted, imap

log = logging.getLogger(__name__)


def _load_one(args) -> np.ndarray:
    path, size, framing = args
    return prepare_image(decode_file(path), size, framing)


def cache_key(paths: list[str], size: int, framing: str = DEFAULT_FRAMING) -> str:
    h = hashlib.sha256()
    # the squash key is the one caches had before framing existed, so they stay valid
    h.update(f"{size}|{RESIZE_METHOD}|v1".encode() if framing == DEFAULT_FRAMING
             else f"{size}|{RESIZE_METHOD}|{framing}|v1".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}|{st.st_size}|{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:20]


def load_images(paths: list[str], size: int, cache_dir: Path | None, workers: int = 2,
                progress: bool = True, framing: str = DEFAULT_FRAMING,
                on_item: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(N, size, size, 3) uint8, in the order of `paths`, framed (mlcore.framing) and resized the
    way inference does; cached in `cache_dir` as .npy. ``on_item(done, total)`` is called after
    each image decoded (a heartbeat: a cold cache takes long)."""
    f = None
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tag = "" if framing == DEFAULT_FRAMING else f"{framing}_"
        f = cache_dir / f"images_{size}px_{tag}{cache_key(paths, size, framing)}.npy"
        if f.is_file():
            arr = np.load(f, mmap_mode=None)
            if arr.shape == (len(paths), size, size, 3):
                log.info("loaded image cache %s", f)
                return arr
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    args = [(p, size, framing) for p in paths]
    if workers > 1 and len(paths) > 64:
        with imap(_load_one, args, workers) as it:
            if progress:
                from tqdm import tqdm

                it = tqdm(it, total=len(args), desc=f"decoding {size}px", unit="img")
            for i, a in enumerate(counted(it, len(args), on_item)):
                out[i] = a
    else:
        for i, a in enumerate(counted(map(_load_one, args), len(args), on_item)):
            out[i] = a
    if f is not None:
        tmp = f.with_suffix(".tmp.npy")
        np.save(tmp, out)
        tmp.replace(f)
        (f.with_suffix(".json")).write_text(json.dumps({"n": len(paths), "size": size, "framing": framing}))
    return out
