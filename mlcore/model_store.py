"""Loading and caching of model artifacts (directory with model.keras + model_card.json)."""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from mlcore.artifact import CARD_FILE, MODEL_FILE, CardError, read_card, sha256_file
from mlcore.options import SHIPPED_MODEL_DIR, current
from mlcore.scoring import Thresholds

__all__ = ["SHIPPED_MODEL_DIR", "LoadedModel", "ModelLoadError", "default_model_dir", "get_model", "load_model"]


class ModelLoadError(RuntimeError):
    """The model directory is missing, incomplete or corrupt."""


def default_model_dir() -> Path:
    """The configured default model (mlcore.options), by default the bundled one."""
    return current().model_dir


@dataclass
class LoadedModel:
    model_dir: Path
    card: dict
    keras_model: object = field(repr=False)
    sha256: str = ""
    # sha256 of the model_card.json it was loaded from: a card re-assessed in place (new image
    # checks, same model.keras) gives another one, recorded with each prediction for the audit
    card_sha256: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _runner: object = field(default=None, repr=False)
    _gradcam_fns: dict = field(default_factory=dict, repr=False, compare=False)  # mlcore.explain

    @property
    def version(self) -> str:
        return str(self.card["version"])

    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])

    @property
    def input_size(self) -> int:
        return int(self.card["input_size"])

    @property
    def framing(self) -> str:
        """How images are framed before the resize (mlcore.framing); older cards squash."""
        from .framing import DEFAULT_FRAMING

        return str(self.card.get("framing") or DEFAULT_FRAMING)

    @property
    def temperature(self) -> float:
        return float(self.card["temperature"])

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds.from_dict(self.card["thresholds"])

    @cached_property
    def clinical(self):
        """The card's clinical-context adjustment (mlcore.clinical), or None for an image-only
        model; parsed once per loaded model (it is applied on every scoring call)."""
        from mlcore.clinical import ClinicalAdjustment

        d = self.card.get("clinical_context")
        return ClinicalAdjustment.from_dict(d) if d else None

    @property
    def last_conv_layer(self) -> str:
        return str(self.card.get("last_conv_layer", "last_conv"))

    @property
    def tta(self) -> str:
        """The card's test-time augmentation, unless the options (mlcore.options) override it."""
        from .runners import tta_setting

        return tta_setting(str(self.card.get("tta", "none")))

    @cached_property
    def assessment(self) -> dict | None:
        """The artifact's quality thresholds, out-of-domain threshold and conformal floor
        (training.assessment), or None for a model from before them."""
        return self.card.get("assessment")

    @cached_property
    def ood_detector(self):
        """The out-of-domain detector (mlcore.ood) stored with the artifact, or None."""
        from mlcore.ood import FEATURE_LAYER, MahalanobisDetector, has_feature_layer

        info = (self.assessment or {}).get("ood")
        if not info:
            return None
        if not has_feature_layer(self.keras_model):
            # serving it without the detector would call every image familiar: refuse the model
            raise ModelLoadError(f"{self.model_dir / CARD_FILE} declares an out-of-domain detector, but the "
                                 f"network has no feature layer {FEATURE_LAYER!r} to feed it")
        path = self.model_dir / info["file"]
        sha = sha256_file(path) if path.is_file() else None
        if sha != info.get("sha256"):
            raise ModelLoadError(f"{path} is missing or does not match the model card's sha256")
        return MahalanobisDetector.load(path)

    def runner(self):
        """The compiled inference-only runner (mlcore.runners), built on first use. For a model
        with an out-of-domain detector it computes the logits and the features in one pass."""
        if self._runner is None:
            with self._lock:
                if self._runner is None:
                    from .runners import build_runner

                    if self.ood_detector is not None:
                        from mlcore.ood import with_features

                        # its own LiteRT cache key: the converted graph has the extra output
                        self._runner = build_runner(with_features(self.keras_model), self.input_size,
                                                    sha256=self.sha256 + ":features",
                                                    model_path=self.model_dir / self.card.get("model_file", MODEL_FILE), features=True,
                                                    model_sha256=self.sha256)
                    else:
                        self._runner = build_runner(self.keras_model, self.input_size, sha256=self.sha256,
                                                    model_path=self.model_dir / self.card.get("model_file", MODEL_FILE),
                                                    model_sha256=self.sha256)
        return self._runner

    def predict_logits_and_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """float32 (N, S, S, 3) 0..255 -> (logits (N, 9), penultimate features or None), with the
        test-time augmentation of ``tta`` folded into the batch."""
        runner = self.runner()
        with self._lock:
            out = runner.logits(batch, tta=self.tta)
        k = len(self.classes)
        return (out[:, :k], out[:, k:]) if self.ood_detector is not None else (out, None)

    def predict_logits(self, batch: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """float32 (N, S, S, 3) 0..255 -> float32 logits (N, 9), with the test-time augmentation of
        ``tta``; the views are folded into the batch (at most 64 views per forward call)."""
        return self.predict_logits_and_features(batch)[0]

    def predict_logits_reference(self, batch: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """The Keras reference (eager call, training.model.predict_logits) for parity checks."""
        from mlcore.keras_model import predict_logits

        with self._lock:
            return predict_logits(self.keras_model, batch, batch_size=batch_size, tta=self.tta)

    def predict(self, images: list[np.ndarray], contexts=None):
        """RGB uint8 images (and optional mlcore.clinical.ClinicalContext per image) ->
        list[ImagePrediction] (see mlcore.inference.predict_images)."""
        from .inference import predict_images

        return predict_images(self, images, contexts=contexts)


def _read_card(model_dir: Path) -> dict:
    try:
        return read_card(model_dir)
    except CardError as exc:
        raise ModelLoadError(str(exc)) from exc


def check_tta_override(card: dict, model_dir: Path) -> None:
    """Raise ModelLoadError when the configured test-time augmentation (SECONDLOOK_TTA, mlcore.options)
    differs from the mode the card's temperature, thresholds and image checks were fitted with (its
    ``tta``): served with other views, the logits and the out-of-domain features move away from what
    those were fitted on, and the flags and the abstention would no longer mean what the card says."""
    override, fitted = current().tta, str(card.get("tta", "none"))
    if override and override != fitted:
        fitted_on = "temperature, thresholds" + (" and image checks" if card.get("assessment") else "")
        raise ModelLoadError(
            f"{model_dir / CARD_FILE}: SECONDLOOK_TTA={override} differs from the test-time augmentation "
            f"{fitted!r} its {fitted_on} were fitted with; unset SECONDLOOK_TTA (or set it to {fitted}), or "
            f"recalibrate and re-assess the model for {override} (python -m training recalibrate)")


def _number(value: object) -> float | None:
    """``value`` as a float, or None when it is not a number (a string, null, a list...)."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def check_calibration(card: dict, model_dir: Path) -> None:
    """Raise ModelLoadError when the card's temperature, flag thresholds or conformal probability
    floor is not a usable number: each is applied to every image, and a hand-edited NaN or negative
    value would silently change every result (``p >= nan`` is never true, a negative temperature
    inverts the ranking) rather than fail."""
    where = model_dir / CARD_FILE
    t = _number(card.get("temperature"))
    if t is None or not math.isfinite(t) or t <= 0:
        raise ModelLoadError(f"{where}: temperature {card.get('temperature')!r} is not a finite number > 0")
    thresholds = card.get("thresholds")
    if not isinstance(thresholds, dict):
        raise ModelLoadError(f"{where}: thresholds {thresholds!r} are not a mapping of melanoma and malignancy")
    for name in ("melanoma", "malignancy"):
        v = _number(thresholds.get(name))
        if v is None or not math.isfinite(v) or not 0.0 <= v <= 1.0:
            raise ModelLoadError(f"{where}: {name} threshold {thresholds.get(name)!r} is not a finite "
                                 "number within [0, 1]")
    conformal = (card.get("assessment") or {}).get("conformal") or {}
    if conformal.get("probability_floor") is not None:  # None: no prediction sets (mlcore.inference)
        f = _number(conformal["probability_floor"])
        if f is None or not math.isfinite(f) or not 0.0 <= f <= 1.0:
            raise ModelLoadError(f"{where}: conformal probability floor {conformal['probability_floor']!r} "
                                 "is not a finite number within [0, 1]")


def keras_file_has_feature_layer(model_file: Path) -> bool:
    """Whether a saved ``model.keras`` has the feature layer the out-of-domain detector reads
    (mlcore.ood.has_feature_layer), read from the file's config without loading TensorFlow."""
    import json
    import zipfile

    from mlcore.keras_model import MEMBER_PREFIX
    from mlcore.ood import FEATURE_LAYER

    with zipfile.ZipFile(model_file) as archive:
        config = json.loads(archive.read("config.json"))

    def layers(cfg: dict) -> list[dict]:
        return list((cfg.get("config") or {}).get("layers") or [])

    def name(layer: dict) -> str:
        return str(layer.get("name") or (layer.get("config") or {}).get("name") or "")

    def has_it(cfg: dict) -> bool:
        return any(name(layer) == FEATURE_LAYER for layer in layers(cfg))

    return has_it(config) or any(name(m).startswith(MEMBER_PREFIX) and has_it(m) for m in layers(config))


def _card_sha256(model_dir: Path) -> str:
    try:
        return sha256_file(model_dir / CARD_FILE)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {model_dir / CARD_FILE}: {exc}") from exc


def load_model(model_dir: Path, *, card_sha256: str | None = None) -> LoadedModel:
    """Read model_card.json, verify sha256 of model.keras, load the Keras model (TF imported here).
    Refuses (ModelLoadError) a SECONDLOOK_TTA override the card was not fitted with
    (`check_tta_override`), a temperature, flag threshold or conformal floor that is not a usable
    number (`check_calibration`) and a card whose out-of-domain detector cannot be built.
    ``card_sha256``: the card's sha256 when the caller has just computed it (`get_model`); the
    loaded model carries it, checked against the card file once read, so that it names the card
    the model was loaded with (a card rewritten meanwhile is refused: loading it again is safe)."""
    model_dir = Path(model_dir).expanduser().resolve()
    if card_sha256 is None:
        card_sha256 = _card_sha256(model_dir)
    card = _read_card(model_dir)
    if _card_sha256(model_dir) != card_sha256:
        raise ModelLoadError(f"{model_dir / CARD_FILE} was rewritten while the model was loaded "
                             "(re-assessed meanwhile?): load it again")
    check_tta_override(card, model_dir)
    check_calibration(card, model_dir)
    mpath = model_dir / card.get("model_file", MODEL_FILE)
    if not mpath.is_file():
        raise ModelLoadError(f"{mpath} is missing")
    sha = sha256_file(mpath)
    if sha != card["model_sha256"]:
        raise ModelLoadError(f"{mpath} is corrupt or was replaced: sha256 {sha[:12]}... does not match "
                             f"the model card ({str(card['model_sha256'])[:12]}...)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from mlcore.keras_model import load_keras_model

        km = load_keras_model(mpath)
    except Exception as exc:
        raise ModelLoadError(f"cannot load {mpath}: {exc}") from exc
    loaded = LoadedModel(model_dir=model_dir, card=card, keras_model=km, sha256=sha,
                         card_sha256=card_sha256)
    try:
        loaded.clinical  # noqa: B018 - parse (and cache) it now, so a bad card fails at load time
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{model_dir / CARD_FILE}: unusable clinical_context: {exc}") from exc
    try:
        loaded.ood_detector  # noqa: B018 - verify the detector's file against the card at load time
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise ModelLoadError(f"{model_dir}: unusable out-of-domain detector: {exc}") from exc
    return loaded


_CACHE: dict[tuple[str, str, str], LoadedModel] = {}
_CACHE_LOCK = threading.Lock()


def get_model(model_dir: Path | None = None) -> LoadedModel:
    """Per-process cache keyed by (resolved path, sha256 of model.keras, sha256 of the card): a card
    rewritten in place (``python -m training assess`` re-fits the image checks, model.keras
    unchanged) is loaded again."""
    model_dir = Path(model_dir or default_model_dir()).expanduser().resolve()
    card = _read_card(model_dir)
    card_sha = _card_sha256(model_dir)
    key = (str(model_dir), str(card["model_sha256"]), card_sha)
    with _CACHE_LOCK:
        m = _CACHE.get(key)
        if m is None:
            m = load_model(model_dir, card_sha256=card_sha)
            for k in [k for k in _CACHE if k[0] == key[0]]:
                del _CACHE[k]
            _CACHE[key] = m
        return m


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
