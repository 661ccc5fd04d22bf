"""CPU inference speed, side by side: the naive Keras baseline vs the project's inference path.

    python bench/inference.py [--model DIR] [--images N] [--quick] [--no-footprint] [--baseline DIR]

On the same JPEG bytes (real images from SECONDLOOK_DATA_DIR or ../shared/data when present,
otherwise generated JPEGs) and the same model, prints JSON with:
- naive baseline: PIL decode + resize + np.expand_dims + keras ``model.predict`` per image;
- the project's path (mlcore.inference.predict_bytes / predict_images, what the worker calls)
  for each engine/precision, with and without the 8-view TTA: single-image latency p50/p95 (warm,
  JPEG bytes -> probabilities) and batch throughput (images/s, decoding included);
- parity: max |p - p_keras| of the calibrated probabilities against the Keras reference;
- the quality / out-of-domain / prediction-set checks: the single-image p50 with and without them;
- FLOPs per image (analytic, from the Keras layers) and the fraction of the CPU's peak, with the
  peak measured here by a large fp32 and bf16 matmul;
- JPEG decode: time and parity of the reduced (draft) decode vs the full decode;
- worker footprint: a fresh process's cold start (process start -> first prediction) and
  resident memory after warm-up.
- with ``--baseline DIR``, the cost budget of issue 17 in this run: the shipped path's single-image
  p50 against the baseline's (in alternating warm blocks; budget 1.2x) and its throughput against the naive
  loop without TTA (floor 8x). The baseline the issue named is the ensemble shipped then:
  ``git archive ca6de9a^ classifier/shipped_model | tar -x -C var/ens2 --strip-components=2``.
The machine may be shared: every figure is a median over repeats after warm-up.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def _stats_ms(ts) -> dict:
    a = np.asarray(ts) * 1000.0
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p95_ms": round(float(np.percentile(a, 95)), 2),
            "n": int(a.size)}


def load_jpegs(n: int, seed: int = 0) -> tuple[list[bytes], str]:
    """n JPEG files' bytes from the shared data (HAM10000 224 px / ISIC 180 px) or generated ones."""
    cands = [os.environ.get("SECONDLOOK_DATA_DIR"), str(ROOT.parent / "shared" / "data")]
    for c in cands:
        if c and Path(c).is_dir():
            files = sorted(Path(c).rglob("*.jpg"))
            if files:
                rng = np.random.default_rng(seed)
                pick = [files[i] for i in rng.choice(len(files), size=min(n, len(files)), replace=False)]
                return [p.read_bytes() for p in pick], f"{c} ({len(files)} jpg, {len(pick)} sampled)"
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = Image.new("RGB", (224, 224), tuple(int(v) for v in rng.integers(150, 230, 3)))
        d = ImageDraw.Draw(img)
        x, y, r = (int(v) for v in rng.integers(60, 160, 3) // np.array([1, 1, 3]))
        d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(40, 120, 3)))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out, "generated 224x224 JPEGs"


def _leaf_layers(km):
    """The model's layers, with nested models (ensemble members) replaced by their own layers."""
    for layer in km.layers:
        if hasattr(layer, "layers"):
            yield from _leaf_layers(layer)
        else:
            yield layer


def model_flops(km) -> dict:
    """Multiply-adds x 2 of the conv and dense layers, per image (from the built Keras graph)."""
    conv = dense = other = 0
    for layer in _leaf_layers(km):
        cls = type(layer).__name__
        if cls == "Conv2D":
            _, h, w, cout = layer.output.shape
            cin = layer.input.shape[-1]
            kh, kw = layer.kernel_size
            conv += 2 * h * w * cout * kh * kw * cin // layer.groups
        elif cls == "Dense":
            dense += 2 * layer.input.shape[-1] * layer.units
        elif cls in ("BatchNormalization", "Activation", "Add", "Rescaling", "AveragePooling2D",
                     "GlobalAveragePooling2D"):
            shp = layer.output.shape[1:] if cls != "GlobalAveragePooling2D" else layer.input.shape[1:]
            other += int(np.prod(shp)) * (2 if cls in ("BatchNormalization", "Rescaling") else 1)
    return {"conv_dense_flops": int(conv + dense), "elementwise_flops": int(other),
            "total_flops": int(conv + dense + other), "method": "analytic from Keras layer shapes (2 x MACs)"}


def matmul_peak(n: int, reps: int) -> dict:
    import tensorflow as tf

    out = {}
    for name, dt in (("fp32", tf.float32), ("bf16", tf.bfloat16)):
        a = tf.random.uniform((n, n), dtype=tf.float32)
        a = tf.cast(a, dt)
        b = tf.cast(tf.random.uniform((n, n), dtype=tf.float32), dt)
        f = tf.function(lambda x, y: tf.linalg.matmul(x, y))
        for _ in range(2):
            f(a, b)
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            f(a, b)  # CPU ops run synchronously
            ts.append(time.perf_counter() - t)
        # peak = best of the repeats (the machine is shared); the median is shown too
        out[name + "_gflops"] = round(2 * n ** 3 / float(np.min(ts)) / 1e9, 1)
        out[name + "_gflops_median"] = round(2 * n ** 3 / float(np.median(ts)) / 1e9, 1)
    out["n"] = n
    out["bf16_over_fp32"] = round(out["bf16_gflops"] / out["fp32_gflops"], 2)
    return out


def naive_baseline(km, blobs, size, reps_single, tta) -> dict:
    """A notebook's loop: PIL decode, resize, expand_dims, model.predict, one image at a time."""
    from PIL import Image

    from mlcore.keras_model import TTA_VIEWS, dihedral_views

    def one(data):
        img = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BILINEAR)
        x = np.expand_dims(np.asarray(img, dtype=np.float32), 0)
        if TTA_VIEWS[tta] > 1:
            return np.mean([km.predict(np.ascontiguousarray(v), verbose=0)
                            for v in dihedral_views(x, TTA_VIEWS[tta])], axis=0)
        return km.predict(x, verbose=0)

    for d in blobs[:3]:
        one(d)
    ts = []
    for i in range(reps_single):
        t = time.perf_counter()
        one(blobs[i % len(blobs)])
        ts.append(time.perf_counter() - t)
    res = _stats_ms(ts)
    res["images_per_s"] = round(1000.0 / float(np.mean(np.asarray(ts) * 1000.0)), 1)
    return res


def project_path(m, blobs, reps_single, batch, reps_batch) -> dict:
    """mlcore.inference on JPEG bytes: predict_bytes (single) and predict_many_bytes (batch)."""
    from mlcore.inference import predict_bytes, predict_many_bytes

    for d in blobs[:3]:
        predict_bytes(m, d)
    predict_many_bytes(m, blobs[:batch])
    ts = []
    for i in range(reps_single):
        t = time.perf_counter()
        predict_bytes(m, blobs[i % len(blobs)])
        ts.append(time.perf_counter() - t)
    res = _stats_ms(ts)
    bt = []
    for r in range(reps_batch):
        chunk = [blobs[(r * batch + j) % len(blobs)] for j in range(batch)]
        t = time.perf_counter()
        predict_many_bytes(m, chunk)
        bt.append(time.perf_counter() - t)
    res["batch"] = batch
    res["images_per_s"] = round(batch / float(np.median(bt)), 1)
    res["engine"], res["precision"], res["tta"] = m.runner().engine, m.runner().precision, m.tta
    return res


def probs_of(m, images_f32, temperature):
    from mlcore.scoring import softmax_with_temperature

    return softmax_with_temperature(m.predict_logits(images_f32), temperature)


def decode_check(blobs, size, reps, framing: str = "squash") -> dict:
    """Full decode vs reduced (draft) decode, framed the model's way (mlcore.framing): time and
    parity, on the real images and on 4x upscaled camera-sized versions of a few of them."""
    from PIL import Image

    from mlcore.preprocess import decode_image, prepare_batch

    same = all(np.array_equal(prepare_batch([decode_image(b)], size, framing),
                              prepare_batch([decode_image(b, size)], size, framing)) for b in blobs)
    big = []
    for b in blobs[:8]:
        img = Image.open(io.BytesIO(b)).convert("RGB")
        img = img.resize((img.width * 9, img.height * 9), Image.BICUBIC)  # ~2000 px, like a camera
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=92)
        big.append(buf.getvalue())

    def t_of(fn, data):
        ts = []
        for _ in range(reps):
            for d in data:
                t = time.perf_counter()
                fn(d)
                ts.append(time.perf_counter() - t)
        return round(float(np.median(ts)) * 1000, 2)

    full_b = prepare_batch([decode_image(b) for b in big], size, framing)
    red_b = prepare_batch([decode_image(b, size) for b in big], size, framing)
    return {
        "dataset_images_bitwise_identical_to_training_preprocessing": bool(same),
        "dataset_decode_resize_ms": t_of(lambda d: prepare_batch([decode_image(d, size)], size, framing),
                                         blobs[:16]),
        "camera_size": list(Image.open(io.BytesIO(big[0])).size),
        "camera_full_decode_resize_ms": t_of(lambda d: prepare_batch([decode_image(d)], size, framing), big[:4]),
        "camera_reduced_decode_resize_ms": t_of(lambda d: prepare_batch([decode_image(d, size)], size, framing), big[:4]),
        "camera_pixel_max_abs_diff": float(np.abs(full_b - red_b).max()),
        "camera_pixel_mean_abs_diff": round(float(np.abs(full_b - red_b).mean()), 3),
        "_full": full_b, "_reduced": red_b,
    }


def assessment_overhead(base, km, blobs, size, reps, runner_model, runner_sha) -> dict:
    """What the quality checks, the out-of-domain detector and the prediction sets add to one
    image's latency: the default path (LiteRT fp32) with them, against the same model without them
    (its card's assessment removed, logits-only runner), measured alternately in this run."""
    from mlcore.runners import build_runner
    from mlcore.inference import predict_bytes

    if not base.assessment:
        return {"note": "this model has no fitted checks (an artifact from before them)"}
    with_checks = dataclasses.replace(base, _lock=threading.Lock(), _runner=None)
    with_checks._runner = build_runner(runner_model, size, sha256=runner_sha, engine="tflite", precision="fp32")
    plain = dataclasses.replace(base, card={k: v for k, v in base.card.items() if k != "assessment"},
                                _lock=threading.Lock(), _runner=None)
    plain._runner = build_runner(km, size, sha256=base.sha256, engine="tflite", precision="fp32")
    for m in (with_checks, plain):
        for d in blobs[:8]:
            predict_bytes(m, d)
    t_with, t_plain = [], []
    for i in range(max(reps, 30)):
        d = blobs[i % len(blobs)]
        for m, ts in ((with_checks, t_with), (plain, t_plain)):
            t = time.perf_counter()
            predict_bytes(m, d)
            ts.append(time.perf_counter() - t)
    a, b = _stats_ms(t_with), _stats_ms(t_plain)
    return {"with_checks": a, "without_checks": b, "added_p50_ms": round(a["p50_ms"] - b["p50_ms"], 2),
            "engine": with_checks.runner().engine}


def cost_budget(shipped, baseline, blobs, rounds: int, batch: int, naive_images_per_s: float,
                block: int = 10) -> dict:
    """Issue 17's cost rule in this run: the shipped path's single-image p50 (JPEG bytes ->
    probabilities, with its checks and its card's TTA) against ``baseline``'s (the ensemble shipped
    when the issue was filed), and its batched throughput against the naive Keras loop without TTA.

    The two models take turns in blocks (``block`` single images, then one batch, per model and
    round), so both see the same machine over the run while each block runs warm, as a worker that
    serves one model does (timing them image by image instead evicts each other's weights from the
    cache at every call, which costs the larger ensemble the most)."""
    from mlcore.inference import predict_bytes, predict_many_bytes

    for m in (shipped, baseline):
        for d in blobs[:8]:
            predict_bytes(m, d)
        predict_many_bytes(m, blobs[:batch])
    single: dict[int, list[float]] = {0: [], 1: []}
    batched: dict[int, list[float]] = {0: [], 1: []}
    for r in range(rounds):
        for k, m in enumerate((shipped, baseline)):
            for j in range(block):
                d = blobs[(r * block + j) % len(blobs)]
                t = time.perf_counter()
                predict_bytes(m, d)
                single[k].append(time.perf_counter() - t)
            chunk = [blobs[(r * batch + j) % len(blobs)] for j in range(batch)]
            t = time.perf_counter()
            predict_many_bytes(m, chunk)
            batched[k].append(time.perf_counter() - t)

    def summary(k: int, m) -> dict:
        return {"version": m.version, "tta": m.tta, "engine": m.runner().engine, "checks": bool(m.assessment),
                **_stats_ms(single[k]), "images_per_s": round(batch / float(np.median(batched[k])), 1)}

    a, b = summary(0, shipped), summary(1, baseline)
    return {
        "shipped": a, "baseline": b,
        "p50_ratio": round(a["p50_ms"] / b["p50_ms"], 3),
        "p50_within_1_2x": a["p50_ms"] <= 1.2 * b["p50_ms"],
        "naive_keras_tta_none_images_per_s": naive_images_per_s,
        "throughput_x_naive": round(a["images_per_s"] / naive_images_per_s, 1),
        "throughput_at_least_8x": a["images_per_s"] >= 8 * naive_images_per_s,
    }


FOOTPRINT_CODE = r"""
import os, sys, time, json, resource
t_import = time.time()
sys.path.insert(0, {root!r})
import psutil
from mlcore.model_store import get_model
from mlcore.inference import predict_bytes, predict_many_bytes
data = open({img!r}, 'rb').read()
m = get_model({model!r})
p = predict_bytes(m, data)
t_first = time.time()
proc = psutil.Process()
cold = t_first - proc.create_time()
rss_first = proc.memory_info().rss
for _ in range(5):
    predict_many_bytes(m, [data] * 8)
for _ in range(20):
    predict_bytes(m, data)
print(json.dumps({{"cold_start_s": round(cold, 2), "import_to_first_prediction_s": round(t_first - t_import, 2),
                  "rss_after_first_prediction_mb": round(rss_first / 2**20, 1),
                  "rss_after_warmup_mb": round(proc.memory_info().rss / 2**20, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "engine": m.runner().engine, "precision": m.runner().precision, "tta": m.tta}}))
"""


def footprint(model_dir: Path, blob: bytes, env_extra: dict, runs: int) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as td:
        img = Path(td) / "x.jpg"
        img.write_bytes(blob)
        code = FOOTPRINT_CODE.format(root=str(ROOT), img=str(img), model=str(model_dir))
        outs = []
        for _ in range(runs):
            env = dict(os.environ, **env_extra)
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
            if r.returncode != 0:
                return {"error": r.stderr[-2000:]}
            outs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    res = dict(outs[-1])
    for k in ("cold_start_s", "import_to_first_prediction_s", "rss_after_warmup_mb", "peak_rss_mb"):
        res[k] = float(np.median([o[k] for o in outs]))
    res["runs"] = runs
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-footprint", action="store_true")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="the model the cost budget is measured against in this run (issue 17: the "
                         "ensemble shipped when it was filed, classifier/shipped_model at ca6de9a^)")
    a = ap.parse_args()
    reps_single = 15 if a.quick else 60
    reps_batch = 2 if a.quick else 5
    batch = 32

    from mlcore.model_store import default_model_dir, load_model
    from mlcore.preprocess import decode_image, prepare_batch
    from mlcore.scoring import softmax_with_temperature

    model_dir = (a.model or default_model_dir()).resolve()
    blobs, source = load_jpegs(a.images)
    t = time.perf_counter()
    base = load_model(model_dir)
    load_s = time.perf_counter() - t
    size, km, temp = base.input_size, base.keras_model, base.temperature
    import tensorflow as tf

    out = {"model": str(model_dir), "model_version": base.version, "input_size": size, "images": source,
           "cpu": {"cores": len(os.sched_getaffinity(0)), "tf": tf.__version__,
                   "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
           "load_model_s": round(load_s, 2)}
    fl = model_flops(km)
    out["flops_per_image"] = fl
    out["peak"] = matmul_peak(2048 if a.quick else 4096, 4 if a.quick else 8)

    imgs = prepare_batch([decode_image(b) for b in blobs], size, base.framing)
    # a model with an out-of-domain detector computes its features in the same forward pass
    runner_model, runner_sha = km, base.sha256
    if base.ood_detector is not None:
        from mlcore.ood import with_features

        runner_model, runner_sha = with_features(km), base.sha256 + ":features"
    results = {}
    from mlcore.options import configure, current

    # the TTA the runners serve is the configured option (mlcore.options), read when they run: the
    # environment variable alone is read once, at start-up
    saved_tta = current().tta
    from mlcore.keras_model import TTA_MODES, TTA_VIEWS

    for tta in TTA_MODES:
        configure(tta=tta)
        ref = softmax_with_temperature(base.predict_logits_reference(imgs), temp)
        n_naive = reps_single if tta == "none" else max(5, reps_single // TTA_VIEWS[tta])
        results[f"naive_keras_predict/tta={tta}"] = naive_baseline(km, blobs, size, n_naive, tta)
        for engine, prec in (("tflite", "fp32"), ("tf", "fp32"), ("tf", "bf16")):
            from mlcore.runners import build_runner

            m = dataclasses.replace(base, _lock=threading.Lock(), _runner=None)
            m._runner = build_runner(runner_model, size, sha256=runner_sha, engine=engine, precision=prec)
            key = f"project/{m._runner.engine}-{m._runner.precision}/tta={tta}"
            r = project_path(m, blobs, reps_single, batch, reps_batch)
            p = probs_of(m, imgs, temp)
            r["max_abs_prob_diff_vs_keras"] = float(np.abs(p - ref).max())
            r["flag_decisions_differ"] = int(((p[:, 3] >= base.thresholds.melanoma) != (ref[:, 3] >= base.thresholds.melanoma)).sum())
            peak = out["peak"]["bf16_gflops" if prec == "bf16" else "fp32_gflops"]
            views = TTA_VIEWS[tta]
            r["achieved_gflops"] = round(r["images_per_s"] * views * fl["total_flops"] / 1e9, 1)
            r["fraction_of_peak"] = round(r["achieved_gflops"] / peak, 3)
            results[key] = r
        naive = results[f"naive_keras_predict/tta={tta}"]
        naive["achieved_gflops"] = round(naive["images_per_s"] * TTA_VIEWS[tta] * fl["total_flops"] / 1e9, 1)
        naive["fraction_of_peak"] = round(naive["achieved_gflops"] / out["peak"]["fp32_gflops"], 3)
        for k, r in results.items():
            if k.startswith("project/") and k.endswith(f"tta={tta}"):
                r["speedup_throughput_vs_naive"] = round(r["images_per_s"] / naive["images_per_s"], 1)
                r["speedup_p50_vs_naive"] = round(naive["p50_ms"] / r["p50_ms"], 1)
    configure(tta=saved_tta)
    out["results"] = results
    if a.baseline is not None:
        out["cost_budget"] = cost_budget(base, load_model(a.baseline.resolve()), blobs, 4 if a.quick else 8, batch,
                                         results["naive_keras_predict/tta=none"]["images_per_s"])
    out["assessment_overhead"] = assessment_overhead(base, km, blobs, size, reps_single, runner_model, runner_sha)

    dec = decode_check(blobs, size, 3 if a.quick else 10, base.framing)
    configure(tta="none")
    pf = softmax_with_temperature(base.predict_logits_reference(dec.pop("_full")), temp)
    pr = softmax_with_temperature(base.predict_logits_reference(dec.pop("_reduced")), temp)
    dec["camera_prob_max_abs_diff_reduced_vs_full"] = float(np.abs(pf - pr).max())
    configure(tta=saved_tta)
    out["decode"] = dec

    # Grad-CAM heatmap, which the worker also computes for every prediction (mlcore.explain)
    from mlcore.explain import gradcam_overlay_png

    px = decode_image(blobs[0])
    gradcam_overlay_png(base, px)
    ts = []
    for _ in range(3 if a.quick else 8):
        t = time.perf_counter()
        gradcam_overlay_png(base, px)
        ts.append(time.perf_counter() - t)
    out["worker_gradcam_overlay"] = _stats_ms(ts)

    if not a.no_footprint:
        runs = 1 if a.quick else 3
        out["footprint"] = {
            "default": footprint(model_dir, blobs[0], {}, runs),
            "bf16_tta_none": footprint(model_dir, blobs[0], {"SECONDLOOK_INFERENCE_PRECISION": "bf16",
                                                             "SECONDLOOK_TTA": "none"}, runs),
        }
    out["cpu"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
