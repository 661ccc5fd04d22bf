"""Inference-only runners for a loaded Keras model (TensorFlow imported lazily, here only).

Keras stays the training and reference framework; these are faster ways to evaluate the same
weights on CPU:

- ``tf``     : a compiled ``tf.function`` (graph mode, oneDNN) of the Keras model, any batch size;
- ``tflite`` : the model converted with ``tf.lite.TFLiteConverter`` and run by LiteRT
               (``ai-edge-litert``, XNNPACK), one interpreter per batch bucket (fp32 only);
- ``keras``  : the eager Keras call, as ``training.model.predict_logits`` does (reference).

Precision ``bf16`` runs a clone of the model under the ``mixed_bfloat16`` dtype policy (weights
kept in float32, compute in bfloat16 on CPUs with avx512_bf16/AMX); the input scaling + stem conv
block and the logits layer stay float32 (see ``_bf16_clone`` for the measured error).

Test-time augmentation is folded into the batch: the 8 dihedral views of n images are evaluated
as one (8n, S, S, 3) batch and the logits averaged (same result as training.model.predict_logits).

The engine (auto: tflite for fp32 when ai-edge-litert is installed, else tf), the precision, the
TTA override and the cache of converted models come from `mlcore.options.current()`.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from mlcore.options import current

log = logging.getLogger(__name__)

MAX_VIEWS_PER_CALL = 32  # images x TTA views per forward call (32 measured fastest on 2 cores)
TFLITE_BUCKETS = (1, 2, 4, 8, 16, 32)
# A fast runner must agree with the Keras model on a probe batch before it is used.
SELF_CHECK_ATOL = {"fp32": 1e-3, "bf16": 0.5}  # logits
MOBILENET_FP32_BLOCKS = tuple(f"block_{i}_" for i in range(1, 12))


def tta_setting(card_tta: str) -> str:
    """The TTA mode to serve: the configured override (mlcore.options), else the card's. A model is
    not loaded under an override its card was not fitted with (mlcore.model_store.check_tta_override);
    switching it after loading is for benches (bench/inference.py)."""
    from mlcore.keras_model import TTA_MODES

    t = current().tta or card_tta
    if t not in TTA_MODES:
        raise ValueError(f"test-time augmentation must be one of {TTA_MODES}, not {t!r}")
    return t


def dihedral_stack(x: np.ndarray, count: int = 8) -> np.ndarray:
    """(n, S, S, C) -> (count*n, S, S, C): the first ``count`` views of
    mlcore.keras_model.dihedral_views, view-major."""
    from mlcore.keras_model import dihedral_views

    return np.concatenate([np.ascontiguousarray(v) for v in dihedral_views(x, count)], axis=0)


class Runner:
    """float32 (N, S, S, 3) 0..255 -> float32 logits (N, K). Not thread-safe: callers lock."""

    engine = "keras"
    precision = "fp32"

    def __init__(self, fn, engine: str, precision: str):
        self._fn, self.engine, self.precision = fn, engine, precision

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)

    def logits(self, images: np.ndarray, tta: str = "none", max_views: int = MAX_VIEWS_PER_CALL) -> np.ndarray:
        """Logits with test-time augmentation, views folded into the batch."""
        images = np.asarray(images, dtype=np.float32)
        n = len(images)
        if n == 0:
            return np.zeros((0, 9), np.float32)
        from mlcore.keras_model import TTA_VIEWS

        views = TTA_VIEWS[tta]
        step = max(1, max_views // views)
        out = []
        for i in range(0, n, step):
            xb = images[i:i + step]
            if views == 1:
                out.append(self(xb))
            else:
                lg = self(dihedral_stack(xb, views)).reshape(views, len(xb), -1)
                out.append(lg.mean(axis=0, dtype=np.float32))
        return np.concatenate(out).astype(np.float32)


def _fp32_stem(cfg: dict) -> set[str]:
    """Names of the layers from the input through the stem, in config order: the input scaling and
    the stem are where bfloat16 rounding of the raw pixels costs the most accuracy, and they are a
    small share of the compute. The stem is every layer named ``stem*`` (``training.model`` names
    its one or two stem convs that way); for other models, the first conv block (conv, its
    normalisation and activation)."""
    layers = cfg["layers"]
    named = [i for i, layer in enumerate(layers) if str(layer.get("name", "")).startswith("stem")]
    # MobileNetV2 (training.backbone): its depthwise blocks lose more to bfloat16 than the residual
    # CNN's convolutions. Measured on the shipped model and the 64 real images of the bf16 test, the
    # largest probability error is 0.068 with its first conv block in float32, 0.025 through block 0,
    # 0.012 through block 5 and 0.005 through block 9 (v2.1); with every block fine-tuned (v3) it is
    # 0.012 through block 9, 0.005 through block 11 and 0.001 through block 16, so blocks 0-11 stay
    # float32
    named = named or [i for i, layer in enumerate(layers)
                      if str(layer.get("name", "")).startswith(("expanded_conv", *MOBILENET_FP32_BLOCKS))]
    if named:
        return {layer.get("name") for layer in layers[:named[-1] + 1]}
    names: set[str] = set()
    seen_conv = False
    for layer in layers:
        cls = layer.get("class_name", "")
        names.add(layer.get("name"))
        if "Conv" in cls:
            seen_conv = True
        elif seen_conv and cls in ("Activation", "ReLU"):
            return names
    return set()  # no conv block found: nothing special to keep


def _bf16_clone(keras_model):
    """The same architecture under mixed_bfloat16, with the same weights, except for the input
    scaling + stem block and the logits layer, which stay float32.

    Measured on the shipped model and 64 real dermoscopic images: everything in bfloat16 differs
    from the float32 model by up to 0.08 in a probability; a float32 stem brings that to ~0.005
    (the body's convolutions, normalisation and the last conv in bfloat16 cost little accuracy)."""
    import keras

    cfg = keras_model.get_config()
    _to_bf16(cfg)
    clone = keras.Model.from_config(cfg)
    clone.set_weights(keras_model.get_weights())
    return clone


def _to_bf16(cfg: dict) -> None:
    """Set the mixed_bfloat16 policy in a functional model's config (in place), except for the
    input, the stem and the output layers; nested models (ensemble members) get the same rule."""
    policy = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "mixed_bfloat16"},
              "registered_name": None}
    outs = cfg.get("output_layers", [])
    if outs and isinstance(outs[0], str):  # a single output: ["logits", 0, 0]
        outs = [outs]
    keep = {t[0] for t in outs} | _fp32_stem(cfg)
    for layer in cfg["layers"]:
        lc = layer.get("config", {})
        if "layers" in lc:
            _to_bf16(lc)
            continue
        # a Cast's "dtype" is the type it casts to (the out-of-domain features' float32), not a policy
        if layer.get("class_name") in ("InputLayer", "Cast") or layer.get("name") in keep:
            continue
        if "dtype" in lc:
            lc["dtype"] = policy


def _tf_fn(model, input_size: int):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, input_size, input_size, 3], tf.float32)],
                 reduce_retracing=True)
    def f(x):
        return tf.cast(model(x, training=False), tf.float32)

    return lambda x: f(x).numpy()


def _convert_to_tflite(keras_model) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    # The converter prints its SavedModel signature on stdout: keep stdout for the CLIs' JSON/CSV.
    with contextlib.redirect_stdout(sys.stderr):
        return conv.convert()


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _tflite_bytes(keras_model, sha256: str, model_path: Path | None = None, features: bool = False,
                  model_sha256: str | None = None) -> bytes:
    """The LiteRT flatbuffer, converted once per model file and cached on disk by sha256.

    The conversion runs in a short-lived subprocess when the model file and its verified sha256
    (``model_sha256``, checked when the model was loaded) are known: the converter needs several
    hundred MB that a long-lived worker would otherwise keep for good. The subprocess reloads the
    file from disk, so it refuses one that no longer has that sha256 (replaced since the load), and
    the verified in-memory model is converted here instead. ``features``: ``keras_model`` is the
    file's model with its out-of-domain features (mlcore.ood.with_features), and the subprocess
    converts that.
    """
    import tensorflow as tf

    key = hashlib.sha256(f"{sha256}:{tf.__version__}:fp32:{int(features)}".encode()).hexdigest()[:24]
    path = current().cache_dir / f"{key}.tflite"
    seal = path.with_suffix(".sha256")  # the converted file's own hash, written with it
    if path.is_file():
        data = path.read_bytes()
        if seal.is_file() and seal.read_text().strip() == hashlib.sha256(data).hexdigest():
            return data
        log.warning("cached LiteRT model %s does not match its recorded hash; converting again", path)
    data = None
    if model_path is not None and model_sha256:
        try:
            subprocess.run([sys.executable, "-m", "mlcore.runners", str(model_path), str(path),
                            "--sha256", model_sha256] + (["--with-features"] if features else []), check=True,
                           timeout=600, capture_output=True, cwd=Path(__file__).resolve().parent.parent)
            data = path.read_bytes()
        except (OSError, subprocess.SubprocessError) as exc:
            detail = (getattr(exc, "stderr", None) or b"").decode(errors="replace").strip().splitlines()[-1:]
            log.warning("LiteRT conversion in a subprocess failed (%s%s); converting in this process", exc,
                        f": {detail[0]}" if detail else "")
    if data is None:
        data = _convert_to_tflite(keras_model)
    try:
        _write_atomically(path, data)
        _write_atomically(seal, hashlib.sha256(data).hexdigest().encode())
    except OSError as exc:  # a read-only var dir must not break inference
        log.warning("cannot cache %s: %s", path, exc)
    return data


class _TFLiteFn:
    """One LiteRT interpreter per batch bucket; inputs are zero-padded to the bucket size."""

    def __init__(self, content: bytes, threads: int):
        self._content, self._threads = content, threads
        self._its: dict[int, tuple] = {}
        self._lock = threading.Lock()

    def _interp(self, b: int):
        it = self._its.get(b)
        if it is None:
            from ai_edge_litert.interpreter import Interpreter

            interp = Interpreter(model_content=self._content, num_threads=self._threads)
            inp = interp.get_input_details()[0]
            interp.resize_tensor_input(inp["index"], [b, *inp["shape"][1:]])
            interp.allocate_tensors()
            it = (interp, inp["index"], interp.get_output_details()[0]["index"])
            self._its[b] = it
        return it

    def __call__(self, x: np.ndarray) -> np.ndarray:
        outs = []
        with self._lock:
            for i in range(0, len(x), TFLITE_BUCKETS[-1]):
                xb = x[i:i + TFLITE_BUCKETS[-1]]
                b = next(s for s in TFLITE_BUCKETS if s >= len(xb))
                if b != len(xb):
                    xb = np.concatenate([xb, np.zeros((b - len(xb), *xb.shape[1:]), np.float32)])
                interp, i_in, i_out = self._interp(b)
                interp.set_tensor(i_in, np.ascontiguousarray(xb))
                interp.invoke()
                outs.append(interp.get_tensor(i_out)[:min(len(x) - i, TFLITE_BUCKETS[-1])].copy())
        return np.concatenate(outs)


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def build_runner(keras_model, input_size: int, *, sha256: str = "", engine: str | None = None,
                 precision: str | None = None, self_check: bool = True,
                 model_path: Path | None = None, features: bool = False,
                 model_sha256: str | None = None) -> Runner:
    """The fastest available runner for (engine, precision); falls back to ``tf`` then ``keras``
    when the requested one cannot be built or disagrees with the Keras model on a probe batch.
    ``model_path`` and ``model_sha256`` (the file ``keras_model`` was loaded from, and its sha256
    verified at load): LiteRT conversion in a subprocess that refuses the file if it has changed."""
    engine = engine or current().engine
    precision = precision or current().precision
    if engine == "auto":
        engine = "tf"
        if precision == "fp32":
            try:
                import ai_edge_litert.interpreter  # noqa: F401

                engine = "tflite"
            except Exception:
                pass
    if engine == "tflite" and precision != "fp32":
        engine = "tf"  # LiteRT/XNNPACK has no bfloat16 kernels on x86
    attempts = [engine] + [e for e in ("tf", "keras") if e != engine]
    probe = np.random.default_rng(0).uniform(0, 255, (2, input_size, input_size, 3)).astype(np.float32)
    ref = None
    for eng in attempts:
        try:
            model = keras_model if precision == "fp32" or eng == "keras" else _bf16_clone(keras_model)
            prec = "fp32" if eng == "keras" else precision
            if eng == "keras":
                fn = lambda x: np.asarray(keras_model(x, training=False))  # noqa: E731
            elif eng == "tf":
                fn = _tf_fn(model, input_size)
            else:
                fn = _TFLiteFn(_tflite_bytes(keras_model, sha256 or "unknown", model_path, features,
                                             model_sha256=model_sha256), _threads())
            runner = Runner(fn, eng, prec)
            if self_check and eng != "keras":
                if ref is None:
                    ref = np.asarray(keras_model(probe, training=False), np.float32)
                got = runner(probe)
                err = float(np.abs(got - ref).max())
                if not np.isfinite(err) or err > SELF_CHECK_ATOL[prec]:
                    raise RuntimeError(f"{eng}/{prec} logits differ from Keras by {err:.3g}")
            return runner
        except Exception as exc:
            log.warning("inference engine %s (%s) unavailable, falling back: %s", eng, precision, exc)
    raise RuntimeError("no inference engine could be built")


def _convert_main(argv: list[str]) -> int:
    """``python -m mlcore.runners MODEL.keras OUT.tflite [--sha256 HEX] [--with-features]``: convert
    one model (used by _tflite_bytes); ``--with-features`` converts it with its out-of-domain
    features. With ``--sha256`` a model file of another sha256 is refused (exit status 3, nothing
    written): the caller verified the file at load, and this process reads it again."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from mlcore.artifact import sha256_file
    from mlcore.keras_model import load_keras_model

    model_path, out, flags = Path(argv[0]), Path(argv[1]), argv[2:]
    if "--sha256" in flags:
        expected = flags[flags.index("--sha256") + 1]
        actual = sha256_file(model_path)
        if actual != expected:
            print(f"refusing to convert {model_path}: sha256 {actual[:12]}... does not match the loaded "
                  f"model's {expected[:12]}... (replaced since it was loaded?)", file=sys.stderr)
            return 3
    model = load_keras_model(model_path)
    if "--with-features" in flags:
        from mlcore.ood import with_features

        model = with_features(model)
    _write_atomically(out, _convert_to_tflite(model))
    return 0


if __name__ == "__main__":
    sys.exit(_convert_main(sys.argv[1:]))
