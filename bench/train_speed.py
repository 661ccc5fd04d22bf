"""Training throughput (images/s) of the default config, fp32 vs bf16, on synthetic uint8 data
through the real input pipeline (augmentation included).

    python bench/train_speed.py [--quick] [--size 160] [--width 40] [--stem 4] [--batch 64] [--steps 12]
Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run_one(precision: str, size: int, width: int, stages, batch: int, steps: int, stem: int = 2) -> dict:
    import numpy as np
    import tensorflow as tf

    from training.model import build_model, make_train_dataset, set_loss, set_precision

    policy = set_precision(precision)
    tf.keras.utils.set_random_seed(0)
    n = batch * (steps + 3)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    masks = np.eye(9, dtype=np.float32)[rng.integers(0, 9, n)]
    ds = make_train_dataset(imgs, masks, np.ones(n, np.float32), batch_size=batch, seed=0)
    import keras

    model = build_model(size, width=width, stages=stages, stem_stride=stem)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=set_loss(0.05))
    it = iter(ds.repeat())
    for _ in range(2):  # warm-up / tracing
        x, y, w = next(it)
        model.train_on_batch(x, y, sample_weight=w)
    t = time.perf_counter()
    for _ in range(steps):
        x, y, w = next(it)
        model.train_on_batch(x, y, sample_weight=w)
    dt = time.perf_counter() - t
    t = time.perf_counter()
    xb = imgs[:batch].astype("float32")
    for _ in range(3):
        model(xb, training=False)
    inf = 3 * batch / (time.perf_counter() - t)
    return {"precision": policy, "size": size, "width": width, "stages": list(stages), "stem_stride": stem,
            "batch": batch, "train_images_per_s": round(steps * batch / dt, 1),
            "inference_images_per_s": round(inf, 1), "params": int(model.count_params())}


def main() -> None:
    from training.config import TrainConfig

    cfg = TrainConfig()
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="few steps (about a minute in all)")
    ap.add_argument("--size", type=int, default=cfg.image_size)
    ap.add_argument("--width", type=int, default=cfg.width)
    ap.add_argument("--stages", default=",".join(map(str, cfg.stages)))
    ap.add_argument("--stem", type=int, default=cfg.stem_stride, choices=[2, 4])
    ap.add_argument("--batch", type=int, default=cfg.batch_size)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    steps = a.steps or (4 if a.quick else 12)
    stages = tuple(int(s) for s in a.stages.split(","))
    if a._child:
        print(json.dumps(run_one(a._child, a.size, a.width, stages, a.batch, steps, a.stem)))
        return
    # each precision in a fresh process (the Keras dtype policy is global)
    results = []
    precs = ["fp32", "bf16"] if a.precision == "both" else [a.precision]
    for p in precs:
        cmd = [sys.executable, __file__, "--_child", p, "--size", str(a.size), "--width", str(a.width),
               "--stages", a.stages, "--batch", str(a.batch), "--steps", str(steps), "--stem", str(a.stem)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        line = [l for l in out.stdout.splitlines() if l.startswith("{")]
        results.append(json.loads(line[-1]) if line else {"precision": p, "error": out.stderr[-2000:]})
    print(json.dumps({"results": results}, indent=1))


if __name__ == "__main__":
    main()
