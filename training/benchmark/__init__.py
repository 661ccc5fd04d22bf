"""The frozen benchmark: a versioned set of lesions that no training run may use.

Version ``frozen-v1`` is the held-out TEST split of the shipped model (1,596 images of 1,242
lesions, from the ``split_ids`` of ``classifier/shipped_model/model_card.json``). The file
``frozen-v1.json`` next to this module records, per image, its image id, its lesion id, its split
group (lesions joined over near-duplicates by the audit: the unit the paired bootstrap resamples)
and its source, plus the sha256 of that content. Nothing else is stored: labels, images and
clinical metadata are read from the data directory (DATA.md: the data itself never enters the
repository), so a benchmark image that is missing from the data, or whose source changed, is an
error, never a silently smaller benchmark.

Rules (enforced in ``training.splits`` and ``training.train``): every lesion group that holds a
benchmark image or lesion is pinned to the TEST split of every new split, and a train or
validation set that still contains one raises ``BenchmarkLeakError``. Scoring is in
``training.benchmark.scoring``; the promotion gate that compares two models on it is
``classifier.promotion``.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

BENCHMARK_DIR = Path(__file__).resolve().parent
CURRENT_VERSION = "frozen-v1"
FILE_FORMAT = 1
COLUMNS = ("image_id", "lesion_id", "group", "source")
ENV_FILE = "SECONDLOOK_BENCHMARK_FILE"  # another benchmark file (tests with generated data)


class BenchmarkError(RuntimeError):
    """The benchmark file is damaged or does not resolve against the data directory."""


class BenchmarkLeakError(ValueError):
    """A benchmark lesion reached training or validation data: the benchmark is evaluation-only."""


@dataclass(frozen=True)
class BenchmarkImage:
    image_id: str
    lesion_id: str
    group: str  # the resampling unit: lesions joined over near-duplicates
    source: str


@dataclass(frozen=True)
class Benchmark:
    version: str
    content_sha256: str
    images: tuple[BenchmarkImage, ...]
    created_from: Mapping | None = None
    path: str | None = None

    @property
    def image_ids(self) -> frozenset[str]:
        return frozenset(i.image_id for i in self.images)

    @property
    def lesion_ids(self) -> frozenset[str]:
        return frozenset(i.lesion_id for i in self.images)

    @property
    def n_lesions(self) -> int:
        return len(self.lesion_ids)

    def summary(self) -> dict:
        """What a model card or a gate records about the benchmark."""
        return {"version": self.version, "content_sha256": self.content_sha256,
                "images": len(self.images), "lesions": self.n_lesions,
                "groups": len({i.group for i in self.images})}


def content_sha256(version: str, rows: Sequence[Sequence[str]]) -> str:
    """sha256 of the canonical JSON of the version and the (sorted) rows: what the file vouches for."""
    canonical = json.dumps({"version": version, "columns": list(COLUMNS), "images": sorted(map(list, rows))},
                           separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def benchmark_file(version: str | None = None) -> Path:
    """The file of ``version`` (default: the current one, or ``$SECONDLOOK_BENCHMARK_FILE``)."""
    if version is None and os.environ.get(ENV_FILE):
        return Path(os.environ[ENV_FILE]).expanduser().resolve()
    return BENCHMARK_DIR / f"{version or CURRENT_VERSION}.json"


def load_benchmark(path: Path | None = None) -> Benchmark:
    """Read and verify a benchmark file (default: ``benchmark_file()``)."""
    path = Path(path) if path is not None else benchmark_file()
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchmarkError(f"cannot read the frozen benchmark {path}: {exc}") from exc
    if doc.get("format") != FILE_FORMAT or tuple(doc.get("columns", ())) != COLUMNS:
        raise BenchmarkError(f"{path}: unknown benchmark format {doc.get('format')!r} / columns {doc.get('columns')}")
    rows = [tuple(str(v) for v in row) for row in doc["images"]]
    sha = content_sha256(doc["version"], rows)
    if sha != doc.get("content_sha256"):
        raise BenchmarkError(f"{path}: content sha256 {sha[:12]}... does not match the recorded "
                             f"{str(doc.get('content_sha256'))[:12]}...: the frozen benchmark was edited")
    ids = [r[0] for r in rows]
    if len(ids) != len(set(ids)):
        raise BenchmarkError(f"{path}: an image id occurs twice")
    return Benchmark(doc["version"], sha, tuple(BenchmarkImage(*r) for r in rows),
                     doc.get("created_from"), str(path))


_loaded: dict[str, Benchmark] = {}


def current_benchmark() -> Benchmark:
    """The benchmark every training run keeps out and every version is scored on (cached per file)."""
    path = benchmark_file()
    key = f"{path}:{path.stat().st_mtime_ns if path.exists() else 0}"
    if key not in _loaded:
        _loaded[key] = load_benchmark(path)
    return _loaded[key]


def write_benchmark(path: Path, version: str, images: Iterable[BenchmarkImage], created_from: Mapping) -> Benchmark:
    """Write a benchmark file (one image per line, so a diff shows what changed)."""
    rows = sorted((i.image_id, i.lesion_id, i.group, i.source) for i in images)
    sha = content_sha256(version, rows)
    head = {"format": FILE_FORMAT, "version": version, "content_sha256": sha, "created_from": dict(created_from),
            "rules": "evaluation only: no training, validation, calibration or threshold fitting on these lesions",
            "columns": list(COLUMNS)}
    text = json.dumps(head, indent=1)[:-2] + ',\n "images": [\n'
    text += ",\n".join("  " + json.dumps(list(r)) for r in rows) + "\n ]\n}\n"
    Path(path).write_text(text)
    return load_benchmark(Path(path))


def images_of_split(records: Sequence, groups: Mapping[str, str], ids: Sequence[str]) -> list[BenchmarkImage]:
    """Benchmark rows for the image ids ``ids`` of audited ``records`` (split groups ``groups``).
    A group is named by its smallest lesion id, so the name does not depend on audit internals."""
    by_id = {r.isic_id: r for r in records}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise BenchmarkError(f"{len(missing)} ids are not in the cleaned data (e.g. {missing[:3]})")
    lesions_of_group: dict[str, set[str]] = {}
    for i in ids:
        lesions_of_group.setdefault(groups.get(i, i), set()).add(by_id[i].lesion_id)
    return [BenchmarkImage(i, by_id[i].lesion_id, min(lesions_of_group[groups.get(i, i)]), by_id[i].source)
            for i in ids]


def build_from_model(model_dir: Path, data_root: Path, cache_dir: Path | None, out: Path, version: str) -> Benchmark:
    """A new benchmark version from a model card's held-out test split (how frozen-v1 was made)."""
    from mlcore.artifact import read_card

    from ..audit import run_audit

    card = read_card(Path(model_dir), required=("split_ids",))
    audit = run_audit(data_root, cache_dir, progress=False)
    if audit.report["data_fingerprint"] != card.get("data_fingerprint"):
        raise BenchmarkError("the data differ from the ones the model was split on (data fingerprint)")
    rows = images_of_split(audit.records, audit.groups, card["split_ids"]["test"])
    origin = {"model_version": card["version"], "model_sha256": card.get("model_sha256"), "split": "test",
              "data_fingerprint": card.get("data_fingerprint")}
    return write_benchmark(out, version, rows, origin)


# ----------------------------------------------------------------------------- keeping it out of training
def record_keys(record, aliases: Mapping[str, Sequence[str]] | None = None) -> set[str]:
    """Every id under which a record could be a benchmark image or lesion: its image id, the other
    ids the audit merged into it (identical pixels), and its lesion id."""
    keys = {record.isic_id, record.lesion_id}
    keys.update((aliases or {}).get(record.isic_id, ()))
    return keys


def touches(benchmark: Benchmark, record, aliases: Mapping[str, Sequence[str]] | None = None) -> bool:
    """Whether ``record`` is a benchmark image or an image of a benchmark lesion."""
    keys = record_keys(record, aliases)
    return bool(keys & benchmark.image_ids) or bool(keys & benchmark.lesion_ids)


def frozen_groups(benchmark: Benchmark, records: Sequence, groups: Mapping[str, str] | None = None,
                  aliases: Mapping[str, Sequence[str]] | None = None) -> frozenset[str]:
    """The split groups (``groups``: image id -> group; default the record's lesion id) holding any
    benchmark image or lesion: the whole group is evaluation-only, near-duplicates included."""
    groups = groups or {r.isic_id: r.lesion_id for r in records}
    return frozenset(groups.get(r.isic_id, r.lesion_id) for r in records if touches(benchmark, r, aliases))


def check_not_in_training(benchmark: Benchmark, fitted: Mapping[str, Sequence], *,
                          groups: Mapping[str, str] | None = None, frozen: Iterable[str] = (),
                          aliases: Mapping[str, Sequence[str]] | None = None) -> None:
    """Raise BenchmarkLeakError when a record in ``fitted`` (split name -> the records a model is
    trained, validated or calibrated on) is a benchmark image, an image of a benchmark lesion, or
    in one of the ``frozen`` split groups (``groups``: image id -> group)."""
    frozen = frozenset(frozen)
    for name, recs in fitted.items():
        leaked = [r.isic_id for r in recs
                  if touches(benchmark, r, aliases) or (groups is not None and groups.get(r.isic_id) in frozen)]
        if leaked:
            raise BenchmarkLeakError(
                f"{len(leaked)} {name} images belong to lesions of the frozen benchmark {benchmark.version} "
                f"(e.g. {', '.join(sorted(leaked)[:3])}): the benchmark is evaluation-only, so no training "
                "run may train, validate or calibrate on it")
