"""The model artifact on disk: its file names, the one reader of its model card, and file hashes.

A model directory holds ``model.keras`` and ``model_card.json`` (plus metrics, plots and the
assessment files that ``training`` writes). Everything that reads a card (the web app's
registry, the inference cache, the training pipeline, the benches) reads it through
`read_card`, so a missing or broken card fails the same way everywhere.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILE = "model.keras"
CARD_FILE = "model_card.json"
# the fields without which a card cannot serve predictions
REQUIRED_FIELDS = ("version", "classes", "input_size", "temperature", "thresholds", "model_sha256")


class CardError(ValueError):
    """A model directory whose card is missing, unreadable or incomplete (the path is in the message)."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_card(model_dir: Path, *, required: tuple[str, ...] = REQUIRED_FIELDS) -> dict[str, Any]:
    """The parsed ``model_card.json`` of ``model_dir``; raises `CardError` when the directory or
    card is missing, the card is not JSON, or it lacks one of ``required``."""
    model_dir = Path(model_dir)
    path = model_dir / CARD_FILE
    if not model_dir.is_dir():
        raise CardError(f"model directory {model_dir} does not exist")
    if not path.is_file():
        raise CardError(f"{path} is missing (not a SecondLook model directory?)")
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CardError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(card, dict):
        raise CardError(f"{path} is not a JSON object")
    for key in required:
        if key not in card:
            raise CardError(f"{path} lacks the field {key!r}")
    return card


def json_safe(o: Any) -> Any:
    """``o`` as strict JSON: numpy scalars and arrays as Python numbers and lists, tuples as lists,
    and non-finite floats (an AUC undefined on a subgroup with one class) as None. ``NaN`` and
    ``Infinity`` are not JSON: SQLite's JSON_VALID and PostgreSQL's jsonb refuse them. The one
    sanitiser of cards, metrics files, gate results and the registry's metrics."""
    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, np.ndarray):
        return json_safe(o.tolist())
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    return o


def write_card(model_dir: Path, card: dict[str, Any]) -> None:
    """Write ``model_card.json`` (indented, as the pipeline always has), as strict JSON."""
    (Path(model_dir) / CARD_FILE).write_text(json.dumps(json_safe(card), indent=1, allow_nan=False))
