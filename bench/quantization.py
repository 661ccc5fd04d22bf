"""Would a quantized LiteRT graph make more test-time views affordable? Speed and error, side by side.

    python bench/quantization.py [--model DIR] [--images N] [--threads T]

Converts the model with its out-of-domain features (the graph the app serves, `mlcore.ood.with_features`)
three ways with `tf.lite.TFLiteConverter`: float32 (the shipped runner), dynamic-range (int8 weights)
and full-integer post-training quantization (int8 weights and activations, float input/output, the
activation ranges from the first half of the real images). For each, prints one JSON line: the graph's
size, the warm p50 of one call of the app's LiteRT runner at batch 1, 2 (flip2) and 8 (dihedral8)
on ``--threads`` threads, and on the other half of the images the largest error against the Keras
model of a logit, a class probability (temperature 1) and an out-of-domain feature (or the error
LiteRT raised: the full-integer graph can fail in the colour-constancy layer's division, depending
on the activation ranges the representative images gave it).
Real images from SECONDLOOK_DATA_DIR or ../shared/data (bench/inference.py's sample); nothing is
written. A timing, not a test: the figures depend on the CPU and on LiteRT's kernels for it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

MODES = ("fp32", "dynamic", "int8")
BATCHES = (1, 2, 8)


def convert(keras_model, mode: str, representative: np.ndarray) -> bytes:
    """The LiteRT flatbuffer of ``keras_model`` quantized as ``mode`` (one of MODES)."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    if mode != "fp32":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "int8":
        conv.representative_dataset = lambda: ([x[None]] for x in representative)
    with contextlib.redirect_stdout(sys.stderr):  # the converter prints its signature on stdout
        return conv.convert()


def served_ms(fn, images: np.ndarray, batch: int, reps: int = 30) -> float:
    """Warm p50 in ms of one call of the app's LiteRT runner (`mlcore.runners._TFLiteFn`) on
    ``batch`` images."""
    times = []
    for k in range(reps + 5):
        start = (k * batch) % max(1, len(images) - batch)
        xb = images[start:start + batch]
        t = time.perf_counter()
        fn(xb)
        times.append(time.perf_counter() - t)
    return round(float(np.median(times[5:])) * 1000, 2)


def main() -> int:
    from inference import load_jpegs

    from mlcore.keras_model import load_keras_model
    from mlcore.labels import NUM_CLASSES
    from mlcore.model_store import load_model
    from mlcore.ood import with_features
    from mlcore.preprocess import decode_image, prepare_batch
    from mlcore.runners import _TFLiteFn
    from mlcore.scoring import softmax_with_temperature

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "classifier" / "shipped_model"))
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    m = load_model(Path(args.model))
    net = with_features(load_keras_model(Path(args.model) / "model.keras"))
    blobs, source = load_jpegs(args.images)
    x = prepare_batch([decode_image(b, m.input_size) for b in blobs], m.input_size, m.framing)
    rep, held = x[:len(x) // 2], x[len(x) // 2:]
    ref = np.asarray(net(held, training=False), np.float32)
    print(json.dumps({"model": m.version, "images": source, "threads": args.threads}), flush=True)
    for mode in MODES:
        content = convert(net, mode, rep)
        fn = _TFLiteFn(content, args.threads)
        try:
            got = fn(held)
        except RuntimeError as exc:  # a quantized kernel refusing its input is a finding, not a crash
            print(json.dumps({"mode": mode, "size_mb": round(len(content) / 1e6, 1), "error": str(exc)}), flush=True)
            continue
        print(json.dumps({
            "mode": mode, "size_mb": round(len(content) / 1e6, 1),
            "p50_ms_by_batch": {b: served_ms(fn, x, b) for b in BATCHES},
            "max_logit_error": round(float(np.abs(got[:, :NUM_CLASSES] - ref[:, :NUM_CLASSES]).max()), 4),
            "max_probability_error": round(float(np.abs(
                softmax_with_temperature(got[:, :NUM_CLASSES], 1.0)
                - softmax_with_temperature(ref[:, :NUM_CLASSES], 1.0)).max()), 4),
            "max_feature_error": round(float(np.abs(got[:, NUM_CLASSES:] - ref[:, NUM_CLASSES:]).max()), 4),
        }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
