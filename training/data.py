"""Loaders for the two dataset layouts -> one record type.

Problems (unknown classes, missing files, unreadable images, bad metadata rows) are
returned as a list of `Problem` and logged; nothing is silently dropped.
"""
from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

from mlcore.labels import CLASSES, HAM_TO_CLASSES, label_key

from .time_limits import is_time_limit

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
SRC_ISIC = "isic-9class"
SRC_HAM = "ham10000"
SRC_HAM_MORE = "ham10000-more"  # further HAM10000 images (softer: upsampled from 200x150)
HAM_SOURCES = frozenset({SRC_HAM, SRC_HAM_MORE})
ALL_SOURCES = (SRC_ISIC, SRC_HAM, SRC_HAM_MORE)


@dataclass(frozen=True)
class ImageRecord:
    path: str
    isic_id: str
    lesion_id: str  # HAM lesion_id, or the ISIC id for ISIC-only images
    allowed: frozenset  # allowed 9-classes (one, or two for akiec / bkl)
    source: str  # isic-9class | ham10000 | merged sources joined by '+'
    ham_code: str | None = None  # HAM dx code (also derived for ISIC folder classes)
    folder_class: str | None = None  # ISIC folder class
    split_folder: str | None = None  # Train / Test for isic-9class
    age: float | None = None
    sex: str | None = None
    site: str | None = None
    dx_type: str | None = None

    @property
    def label(self) -> str:
        return label_key(self.allowed)

    @property
    def is_single(self) -> bool:
        return len(self.allowed) == 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["allowed"] = sorted(self.allowed)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ImageRecord":
        d = dict(d)
        d["allowed"] = frozenset(d["allowed"])
        return cls(**d)

    def with_(self, **kw) -> "ImageRecord":
        return replace(self, **kw)


@dataclass
class Problem:
    kind: str  # unknown_class | missing_file | unreadable_image | bad_row | ...
    path: str
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LoadResult:
    records: list[ImageRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def extend(self, other: "LoadResult") -> None:
        self.records.extend(other.records)
        self.problems.extend(other.problems)


def _problem(res: LoadResult, kind: str, path, detail: str = "") -> None:
    p = Problem(kind, str(path), detail)
    res.problems.append(p)
    log.warning("data problem: %s %s %s", kind, path, detail)


_ISIC_ID = re.compile(r"ISIC_\d+")


def isic_id_from_name(stem: str) -> str:
    """'ISIC_0025509(1)' (a copy suffix) -> 'ISIC_0025509'; other names are kept as they are."""
    m = _ISIC_ID.search(stem)
    return m.group(0) if m else stem


def _check_readable(path: Path, res: LoadResult) -> bool:
    """Cheap check (header) that the file exists and is an image; full decode happens in the audit."""
    if not path.is_file():
        _problem(res, "missing_file", path)
        return False
    try:
        from PIL import Image

        with Image.open(path) as im:
            im.verify()
    except Exception as exc:
        if is_time_limit(exc):
            raise
        _problem(res, "unreadable_image", path, str(exc)[:200])
        return False
    return True


def load_isic_folders(root: Path, verify: bool = True) -> LoadResult:
    """`root/{Train,Test}/<class>/<ISIC id>.jpg`."""
    from mlcore.labels import CLASS_TO_HAM

    res = LoadResult()
    root = Path(root)
    if not root.is_dir():
        _problem(res, "missing_dir", root)
        return res
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            cls = class_dir.name
            files = sorted(p for p in class_dir.iterdir() if p.is_file())
            if cls not in CLASSES:
                for f in files:
                    _problem(res, "unknown_class", f, f"class folder {cls!r}")
                if not files:
                    _problem(res, "unknown_class", class_dir, f"class folder {cls!r}")
                continue
            for f in files:
                if f.suffix.lower() not in IMAGE_EXTS:
                    _problem(res, "not_an_image", f, "unexpected extension")
                    continue
                if verify and not _check_readable(f, res):
                    continue
                res.records.append(
                    ImageRecord(
                        path=str(f), isic_id=isic_id_from_name(f.stem), lesion_id=isic_id_from_name(f.stem), allowed=frozenset({cls}),
                        source=SRC_ISIC, ham_code=CLASS_TO_HAM[cls], folder_class=cls,
                        split_folder=split_dir.name,
                    )
                )
    return res


def _float_or_none(v: str | None) -> float | None:
    try:
        f = float(v)  # type: ignore[arg-type]
        return None if math.isnan(f) else f
    except (TypeError, ValueError):
        return None


def _str_or_none(v: str | None) -> str | None:
    v = (v or "").strip()
    return None if v in ("", "unknown", "nan") else v


def load_ham(root: Path, verify: bool = True, source: str = SRC_HAM) -> LoadResult:
    """`root/HAM10000_metadata.csv` + `root/images/<image_id>.jpg`."""
    res = LoadResult()
    root = Path(root)
    meta = root / "HAM10000_metadata.csv"
    if not meta.is_file():
        _problem(res, "missing_file", meta, "metadata csv")
        return res
    img_dir = root / "images"
    with meta.open(newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh), start=2):
            image_id = (row.get("image_id") or "").strip()
            dx = (row.get("dx") or "").strip()
            if not image_id:
                _problem(res, "bad_row", f"{meta}:{i}", "no image_id")
                continue
            if dx not in HAM_TO_CLASSES:
                _problem(res, "unknown_class", f"{meta}:{i}", f"dx {dx!r} for {image_id}")
                continue
            path = img_dir / f"{image_id}.jpg"
            if not path.exists():
                alts = [p for p in img_dir.glob(f"{image_id}.*")] if img_dir.is_dir() else []
                if alts:
                    path = alts[0]
            if verify and not _check_readable(path, res):
                continue
            res.records.append(
                ImageRecord(
                    path=str(path), isic_id=image_id,
                    lesion_id=(row.get("lesion_id") or "").strip() or image_id,
                    allowed=HAM_TO_CLASSES[dx], source=source, ham_code=dx,
                    age=_float_or_none(row.get("age")), sex=_str_or_none(row.get("sex")),
                    site=_str_or_none(row.get("localization")), dx_type=_str_or_none(row.get("dx_type")),
                )
            )
    return res


def load_all(data_root: Path, verify: bool = True) -> LoadResult:
    """Every dataset under `data_root` (isic-9class/, ham10000/, ham10000-more/); a missing one
    is a problem. Both HAM10000 folders share lesion ids: the audit and the split see their union."""
    data_root = Path(data_root)
    res = LoadResult()
    res.extend(load_isic_folders(data_root / SRC_ISIC, verify=verify))
    res.extend(load_ham(data_root / SRC_HAM, verify=verify, source=SRC_HAM))
    res.extend(load_ham(data_root / SRC_HAM_MORE, verify=verify, source=SRC_HAM_MORE))
    return res


def load_sources(data_root: Path, sources: Sequence[str] | None = None, extra_records: Sequence = ()) -> LoadResult:
    """``load_all`` kept to ``sources`` (None: all), records and problems alike, plus ``extra_records``
    (e.g. dermatologist-reviewed images): what a training run audits."""
    load = load_all(Path(data_root))
    if sources is not None:
        left_out = set(ALL_SOURCES) - set(sources)
        load.records = [r for r in load.records if r.source in set(sources)]
        load.problems = [p for p in load.problems if not any(
            str(p.path).startswith(str(Path(data_root) / src)) for src in left_out)]
    load.records = list(load.records) + list(extra_records)
    return load
