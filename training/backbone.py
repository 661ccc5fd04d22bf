"""An ImageNet-pretrained MobileNetV2 backbone, bundled with the repository.

No network reaches the training machines, so Keras cannot download its ImageNet weights. The npm
package ``nsfwjs`` (MIT) bundles a Keras MobileNetV2 (alpha 1.0, 224 px) as TensorFlow.js weights
quantised to 8 bits per tensor. Its stem and blocks 0-10 were frozen while its makers trained a
new head (their model config says ``trainable: false``), so those layers are Keras's ImageNet
weights; blocks 11-16 and ``Conv_1`` were fine-tuned from ImageNet on their task. Only the
convolutional layers are kept (never the head) and every kept layer is fine-tuned on dermoscopy
here, so what the backbone brings is generic image features: edges, textures, colour blobs.

``import_nsfwjs`` rebuilds the bundled file from the npm tarball (``npm pack nsfwjs@4.3.0``), so
its provenance can be checked; ``load_backbone_weights`` reads it (dequantising) and
``assign_backbone`` copies it into a model built by ``training.model.build_mobilenet_v2``.
"""
from __future__ import annotations

import base64
import hashlib
import io
import re
import tarfile
from pathlib import Path

import numpy as np

BACKBONE_FILE = Path(__file__).resolve().parent / "backbones" / "mobilenet_v2_imagenet_q8.npz"
SOURCE = ("npm package nsfwjs 4.3.0 (MIT, github.com/infinitered/nsfwjs), "
          "dist/models/mobilenet_v2: Keras MobileNetV2 1.0/224, ImageNet weights, 8-bit quantised")
_MANIFEST_ENTRY = re.compile(
    r'\{name:"(?P<name>[^"]+)",shape:\[(?P<shape>[^\]]*)\],dtype:"float32"'
    r'(?:,quantization:\{min:(?P<min>[-+.\deE]+),scale:(?P<scale>[-+.\deE]+),dtype:"uint8"\})?\}')
_BASE64 = re.compile(r'"([A-Za-z0-9+/=]{10000,})"')


def _manifest(js: str) -> list[dict]:
    entries = []
    for m in _MANIFEST_ENTRY.finditer(js):
        if m["min"] is None:
            raise ValueError(f"{m['name']}: only 8-bit quantised weights are expected")
        shape = [int(s) for s in m["shape"].split(",") if s]
        entries.append({"name": m["name"], "shape": shape, "min": float(m["min"]), "scale": float(m["scale"])})
    if not entries:
        raise ValueError("no weights manifest found in the model file")
    return entries


def import_nsfwjs(tarball: Path, out: Path = BACKBONE_FILE) -> dict:
    """Write the backbone's quantised weights (the dense head dropped) from the nsfwjs npm
    tarball to ``out``; returns {"tensors", "bytes", "sha256"} of the file written."""
    base = "package/dist/models/mobilenet_v2/"
    with tarfile.open(tarball) as tar:
        js = tar.extractfile(base + "model.min.js").read().decode()
        shard = tar.extractfile(base + "group1-shard1of1.min.js").read().decode()
    blob = base64.b64decode(max(_BASE64.findall(shard), key=len))
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for e in _manifest(js):
        n = int(np.prod(e["shape"])) if e["shape"] else 1
        q = np.frombuffer(blob, np.uint8, n, offset).reshape(e["shape"])
        offset += n
        if not e["name"].startswith("dense"):
            arrays["q:" + e["name"]] = q
            arrays["r:" + e["name"]] = np.array([e["min"], e["scale"]], np.float64)
    if offset != len(blob):
        raise ValueError(f"the manifest covers {offset} bytes of a {len(blob)}-byte shard")
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    out.write_bytes(buf.getvalue())
    return {"tensors": len(arrays) // 2, "bytes": out.stat().st_size, "sha256": file_sha256(out)}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def describe(path: Path = BACKBONE_FILE) -> dict:
    """Where the initial weights came from, for the model card."""
    return {"name": "MobileNetV2 1.0 (Keras)", "initial_weights": "ImageNet", "source": SOURCE,
            "file": path.name, "sha256": file_sha256(path), "licence": "MIT (nsfwjs); Keras applications: Apache-2.0"}


def load_backbone_weights(path: Path = BACKBONE_FILE) -> dict[str, np.ndarray]:
    """{"layer/weight": float32 array} dequantised from the bundled file."""
    with np.load(path) as z:
        return {k[2:]: (z[k].astype(np.float32) * np.float32(z["r:" + k[2:]][1])
                        + np.float32(z["r:" + k[2:]][0]))
                for k in z.files if k.startswith("q:")}


def assign_backbone(model, weights: dict[str, np.ndarray]) -> int:
    """Copy ``weights`` into the layers of ``model`` that have the same names (Keras 2 and 3
    name a layer's tensors in the same order; shapes are checked). Returns the number of layers
    set; raises when a named layer's tensors do not match."""
    by_layer: dict[str, list[np.ndarray]] = {}
    for key, arr in weights.items():
        by_layer.setdefault(key.rsplit("/", 1)[0], []).append((key.rsplit("/", 1)[1], arr))
    order = {"kernel": 0, "depthwise_kernel": 0, "gamma": 0, "bias": 1, "beta": 1,
             "moving_mean": 2, "moving_variance": 3}
    count = 0
    for layer in model.layers:
        if layer.name not in by_layer:
            continue
        tensors = [a for _, a in sorted(by_layer[layer.name], key=lambda t: order[t[0]])]
        want = [tuple(w.shape) for w in layer.weights]
        if want != [t.shape for t in tensors]:
            raise ValueError(f"layer {layer.name}: pretrained shapes {[t.shape for t in tensors]} != {want}")
        layer.set_weights(tensors)
        count += 1
    return count
