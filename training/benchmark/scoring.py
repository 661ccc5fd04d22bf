"""Score a model artifact on the frozen benchmark and on PH2, per image, through the app's own
inference path (``LoadedModel.predict``: runner, clinical offset, temperature, assessment).

Benchmark images come from the decode cache at the model's input size (``training.cache``: the
resize the app uses too) with each record's age, sex and site as clinical context, like
``training.evaluate_artifact``; PH2 images are decoded from their files like
``evaluate_external``, without context (PH2 has none). PH2 is scored and reported only.

Scores are cached per model and benchmark under ``<cache dir>/benchmark-scores/``, so the gate
does not rescore the active model for every candidate. The key is the model file's sha256 plus
what else changes the probabilities (temperature, clinical offset, test-time augmentation, input
size, assessment) and the benchmark's version and content sha256: a recalibrated artifact
shares its model file with the original but not its probabilities.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from mlcore.options import current as current_options
from mlcore.scoring import Thresholds

from . import Benchmark, BenchmarkError, current_benchmark

log = logging.getLogger(__name__)
SCORES_FORMAT = 1
CACHE_SUBDIR = "benchmark-scores"
PH2_NAME = "PH2"
BATCH = 64


@dataclass
class ImageSet:
    """The images a comparison is made on, with their truth: the same for every model scored."""

    name: str  # the benchmark version, or "PH2"
    content_sha256: str
    image_ids: np.ndarray
    lesion_ids: np.ndarray  # the unit the paired bootstrap resamples
    masks: np.ndarray  # (N, 9) allowed classes
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # source, sex, age (band), site
    records: list = field(default_factory=list, repr=False)  # ImageRecords (benchmark) or PH2Images
    paths: list[str] = field(default_factory=list, repr=False)
    lesions: np.ndarray | None = None  # the lesion id of each image, where a group joins several
    # the audited data the benchmark was resolved against (training.audit.AuditResult; None for
    # PH2): what the promotion gate checks the compared models' training images against
    audit: object = field(default=None, repr=False)

    @property
    def n_lesions(self) -> int:
        return len(set(np.asarray(self.lesions if self.lesions is not None else self.lesion_ids).astype(str).tolist()))

    @property
    def n_groups(self) -> int:
        return len(set(np.asarray(self.lesion_ids).astype(str).tolist()))


@dataclass
class ScoredImages:
    """One model's calibrated probabilities on an ImageSet (same order)."""

    images: ImageSet
    probs: np.ndarray  # (N, 9)
    assessable: np.ndarray  # (N,) bool: passed the model's quality and out-of-domain checks
    model_version: str
    model_sha256: str
    thresholds: Thresholds

    @property
    def melanoma_probability(self) -> np.ndarray:
        from mlcore.scoring import melanoma_probability

        return melanoma_probability(self.probs)

    @property
    def malignancy_score(self) -> np.ndarray:
        from mlcore.scoring import malignancy_score

        return malignancy_score(self.probs)

    def rows(self) -> list[dict]:
        """One dict per image: ids, subgroup attributes, scores (for a CSV or a look by eye)."""
        mel, mal = self.melanoma_probability, self.malignancy_score
        out = []
        for i, image_id in enumerate(self.images.image_ids):
            row = {"image_id": str(image_id), "lesion_id": str(self.images.lesion_ids[i])}
            row |= {k: str(v[i]) for k, v in self.images.groups.items()}
            row |= {"melanoma_probability": float(mel[i]), "malignancy_score": float(mal[i]),
                    "assessable": bool(self.assessable[i])}
            out.append(row)
        return out


# ----------------------------------------------------------------------------- the image sets
def benchmark_images(data_root: Path, cache_dir: Path | None, benchmark: Benchmark | None = None) -> ImageSet:
    """The benchmark's images resolved against the audited data (paths, labels, age/sex/site);
    raises BenchmarkError when one is missing or its source changed."""
    from mlcore.labels import mask_from_classes

    from ..audit import run_audit
    from ..subgroups import subgroup_labels

    benchmark = benchmark or current_benchmark()
    audit = run_audit(Path(data_root), cache_dir, progress=False)
    by_id = {r.isic_id: r for r in audit.records}
    missing = [i.image_id for i in benchmark.images if i.image_id not in by_id]
    if missing:
        raise BenchmarkError(f"{len(missing)} of the {len(benchmark.images)} images of the frozen benchmark "
                             f"{benchmark.version} are not in the data under {data_root} (e.g. {missing[:3]}): "
                             "install the data it was made from")
    moved = [i.image_id for i in benchmark.images if by_id[i.image_id].source != i.source]
    if moved:
        raise BenchmarkError(f"{len(moved)} images of {benchmark.version} come from another source than recorded "
                             f"(e.g. {moved[:3]}): the data changed, so this benchmark version no longer resolves")
    records = [by_id[i.image_id] for i in benchmark.images]
    labels = subgroup_labels(records)
    return ImageSet(
        name=benchmark.version, content_sha256=benchmark.content_sha256,
        image_ids=np.array([i.image_id for i in benchmark.images]),
        lesion_ids=np.array([i.group for i in benchmark.images]),
        masks=np.stack([mask_from_classes(r.allowed) for r in records]),
        groups={k: np.array(v, dtype=object) for k, v in labels.items()},
        records=records, paths=[r.path for r in records], lesions=np.array([i.lesion_id for i in benchmark.images]),
        audit=audit)


def ph2_images(data_root: Path) -> ImageSet:
    """PH2 (external test set, one image per lesion); FileNotFoundError without it."""
    from ..ph2 import load_ph2, ph2_masks

    ph2 = load_ph2(Path(data_root))
    ids = [x.image_id for x in ph2]
    sha = hashlib.sha256(json.dumps([(x.image_id, x.dx) for x in ph2]).encode()).hexdigest()
    return ImageSet(name=PH2_NAME, content_sha256=sha, image_ids=np.array(ids), lesion_ids=np.array(ids),
                    masks=ph2_masks(ph2), groups={"source": np.array(["ph2"] * len(ph2), dtype=object)},
                    records=ph2, paths=[x.path for x in ph2])


# ----------------------------------------------------------------------------- scoring
def scoring_key(card: dict, images: ImageSet) -> str:
    """What the cached probabilities depend on (see the module docstring), and the serving
    options (mlcore.options: test-time augmentation and precision overrides)."""
    parts = {"format": SCORES_FORMAT, "model_sha256": card.get("model_sha256"),
             "temperature": card.get("temperature"), "clinical_context": card.get("clinical_context"),
             "tta": card.get("tta", "none"), "input_size": card.get("input_size"),
             "assessment": card.get("assessment"), "images": [images.name, images.content_sha256],
             # the serving options that change the figures (engine: same graph, same numbers)
             "serving": [current_options().tta, current_options().precision]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _cache_file(cache_dir: Path, card: dict, images: ImageSet) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in images.name)
    return Path(cache_dir) / CACHE_SUBDIR / f"{safe}-{str(card['model_sha256'])[:12]}-{scoring_key(card, images)[:16]}.npz"


def _predict(model, images: ImageSet, cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, assessable) of a loaded model on ``images``, in batches."""
    from mlcore.labels import CLASSES

    pixels, contexts = _inputs(model, images, cache_dir)
    probs, ok = [], []
    for i in range(0, len(pixels), BATCH):
        preds = model.predict(list(pixels[i:i + BATCH]), contexts=None if contexts is None else contexts[i:i + BATCH])
        probs += [[p.class_probabilities[c] for c in CLASSES] for p in preds]
        ok += [p.assessable for p in preds]
    return np.asarray(probs, dtype=np.float64).reshape(-1, len(CLASSES)), np.asarray(ok, dtype=bool)


def _inputs(model, images: ImageSet, cache_dir: Path | None):
    """The decoded images (the model's own framing and resize happen in ``model.predict``, as for
    an upload) and, for the benchmark, the clinical contexts. ``cache_dir`` is unused: a decode
    cache holds images already framed and resized, which ``predict`` would frame again."""
    from mlcore.inference import decode_for

    pixels = [decode_for(model, Path(p).read_bytes()) for p in images.paths]
    if images.name == PH2_NAME:
        return pixels, None
    from mlcore.clinical import contexts_of

    return pixels, contexts_of(images.records)


def score(model_dir: Path, images: ImageSet, cache_dir: Path | None) -> ScoredImages:
    """The artifact's per-image probabilities on ``images`` (cached; the model is loaded only on a miss)."""
    from mlcore.artifact import read_card

    card = read_card(Path(model_dir))
    thresholds = Thresholds.from_dict(card["thresholds"])
    cached = _cache_file(cache_dir, card, images) if cache_dir is not None else None
    if cached is not None and cached.is_file():
        with np.load(cached, allow_pickle=False) as z:
            if list(z["image_ids"]) == list(images.image_ids):
                log.info("benchmark scores of %s from %s", card["version"], cached)
                return ScoredImages(images, z["probs"], z["assessable"], card["version"], card["model_sha256"],
                                    thresholds)
    from mlcore.model_store import load_model

    model = load_model(Path(model_dir))
    probs, assessable = _predict(model, images, cache_dir)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(cached.stem + ".tmp.npz")
        np.savez(tmp, image_ids=np.asarray(images.image_ids, dtype=str), probs=probs, assessable=assessable)
        tmp.replace(cached)
    return ScoredImages(images, probs, assessable, model.version, model.sha256, thresholds)


def score_artifact(model_dir: Path, data_root: Path, cache_dir: Path | None, *,
                   benchmark: Benchmark | None = None, external: bool = True,
                   image_sets: Sequence[ImageSet] | None = None) -> dict[str, ScoredImages]:
    """{"benchmark": ..., "ph2": ...} for one artifact; ``image_sets`` reuses sets already resolved
    (scoring two models: resolve once). PH2 is left out when ``external`` is False or it is missing."""
    sets = list(image_sets) if image_sets is not None else resolve_sets(data_root, cache_dir, benchmark=benchmark,
                                                                         external=external)
    return {("ph2" if s.name == PH2_NAME else "benchmark"): score(model_dir, s, cache_dir) for s in sets}


def resolve_sets(data_root: Path, cache_dir: Path | None, *, benchmark: Benchmark | None = None,
                 external: bool = True) -> list[ImageSet]:
    """The benchmark's ImageSet, and PH2's when ``external`` and the data has it."""
    sets = [benchmark_images(data_root, cache_dir, benchmark)]
    if external:
        try:
            sets.append(ph2_images(data_root))
        except FileNotFoundError as exc:
            log.warning("PH2 not scored: %s", exc)
    return sets
