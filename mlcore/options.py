"""How this process serves models: which artifact by default, which inference engine and
precision, the test-time augmentation override and where converted models are cached.

The ML core never reads the environment itself. The web app's settings (and each command-line
entry point) parse their environment with `from_environ` and hand the result to `configure`;
everything in `mlcore` then asks `current()`. Defaults are safe for development: the bundled
model, the automatic engine, fp32 and a cache under the repository's own ``var/`` directory
(never a world-writable temporary directory).
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

REPO_ROOT = Path(__file__).resolve().parent.parent
# the trained model the project bundles (its files live beside the registry app that serves it)
SHIPPED_MODEL_DIR = REPO_ROOT / "classifier" / "shipped_model"
DEFAULT_VAR_DIR = REPO_ROOT / "var"

ENGINES = ("auto", "tf", "tflite", "keras")
PRECISIONS = ("fp32", "bf16")
TTA_OVERRIDES = ("", "none", "flip2", "flip4", "dihedral8")  # "" = the model card's own setting


@dataclass(frozen=True)
class InferenceOptions:
    """The settings of model serving (see the module docstring)."""

    model_dir: Path = SHIPPED_MODEL_DIR
    engine: str = "auto"
    precision: str = "fp32"
    tta: str = ""
    cache_dir: Path = DEFAULT_VAR_DIR / "model-cache"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"SECONDLOOK_INFERENCE_ENGINE must be one of {ENGINES}, not {self.engine!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"SECONDLOOK_INFERENCE_PRECISION must be one of {PRECISIONS}, not {self.precision!r}")
        if self.tta not in TTA_OVERRIDES:
            raise ValueError(f"SECONDLOOK_TTA must be one of {TTA_OVERRIDES[1:]}, not {self.tta!r}")

    def replace(self, **changes) -> "InferenceOptions":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


def _precision(raw: str) -> str:
    p = raw.strip().lower() or "fp32"
    return {"bfloat16": "bf16", "mixed_bfloat16": "bf16", "float32": "fp32"}.get(p, p)


def from_environ(env: Mapping[str, str], *, var_dir: Path | None = None) -> InferenceOptions:
    """Parse SECONDLOOK_MODEL_DIR, SECONDLOOK_INFERENCE_ENGINE (auto|tf|tflite|keras),
    SECONDLOOK_INFERENCE_PRECISION (fp32|bf16) and SECONDLOOK_TTA (none|flip2|flip4|dihedral8, empty = the
    card's) from ``env``; the converted-model cache goes under ``var_dir`` (SECONDLOOK_VAR_DIR,
    else the repository's ``var/``). Raises ValueError naming the variable on a bad value."""
    var = Path(var_dir or env.get("SECONDLOOK_VAR_DIR") or DEFAULT_VAR_DIR)
    model = env.get("SECONDLOOK_MODEL_DIR")
    return InferenceOptions(
        model_dir=Path(model).expanduser().resolve() if model else SHIPPED_MODEL_DIR,
        engine=env.get("SECONDLOOK_INFERENCE_ENGINE", "").strip().lower() or "auto",
        precision=_precision(env.get("SECONDLOOK_INFERENCE_PRECISION", "")),
        tta=env.get("SECONDLOOK_TTA", "").strip().lower(),
        cache_dir=var / "model-cache",
    )


_lock = threading.Lock()
_current = InferenceOptions()


def configure(options: InferenceOptions | None = None, **changes) -> InferenceOptions:
    """Set this process's options (``options``, or the current ones with ``changes``); returns them."""
    global _current
    with _lock:
        _current = (options or _current).replace(**changes) if changes else (options or _current)
        return _current


def current() -> InferenceOptions:
    """This process's options (the defaults until `configure` is called)."""
    return _current
