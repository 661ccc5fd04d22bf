"""Data audit: duplicates, conflicts, overlaps -> a cleaned set with each image identity once.

RESOLUTION POLICY (written down, applied by `resolve`):
 1. Identity. An image identity is its ISIC id. Records with different ids but identical decoded
    pixels (sha256 of the RGB uint8 array) are the same identity, too.
 2. Labels. Every record carries a SET of allowed 9-classes (HAM akiec/bkl stand for two).
    a. If the label sets of all records of an identity intersect, they agree: the identity is
       merged into ONE record whose label is the intersection (e.g. HAM akiec + folder
       "actinic keratosis" -> {actinic keratosis}).
    b. Otherwise, if a HAM record is histopathology-confirmed (dx_type == histo), the HAM label
       wins (refined by the folder classes inside it, if any).
    c. Otherwise the identity is conflicting and is DROPPED (listed in the report).
 3. Merged record: the HAM image file and metadata (lesion id, age, sex, site, dx_type) are kept
    when present (larger image, known lesion); source lists all sources.
 4. Near-duplicates (perceptual hash distance <= PHASH_NEAR between DIFFERENT identities) are
    kept, but put in the same split group so they can never straddle train/validation/test.
    The ISIC Train/Test folders are ignored for splitting (images occur in both).
 5. Split groups: HAM lesion_id (ISIC id for ISIC-only images), unioned over near-duplicates.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .data import HAM_SOURCES, SRC_ISIC, ImageRecord, LoadResult, Problem, load_all
from mlcore.imageio import decode_file
from .parallel import counted, imap
from .time_limits import is_time_limit
from mlcore.labels import ham_code_of

log = logging.getLogger(__name__)
PHASH_NEAR = 4
POLICY = __doc__.split("RESOLUTION POLICY (written down, applied by `resolve`):", 1)[1].strip()


# ----------------------------------------------------------------------------- hashing
def phash64(rgb: np.ndarray) -> int:
    """64-bit DCT perceptual hash (grayscale 32x32 -> 8x8 low frequencies vs their median)."""
    from PIL import Image
    from scipy.fft import dctn

    g = Image.fromarray(rgb).convert("L").resize((32, 32), Image.BILINEAR)
    d = dctn(np.asarray(g, dtype=np.float64), norm="ortho")[:8, :8].flatten()
    med = np.median(d[1:])
    bits = d > med
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hash_file(path: str) -> dict:
    try:
        rgb = decode_file(path)
    except Exception as exc:
        if is_time_limit(exc):
            raise
        return {"error": str(exc)[:300]}
    h = hashlib.sha256()
    h.update(str(rgb.shape).encode())
    h.update(rgb.tobytes())
    return {"sha": h.hexdigest(), "phash": phash64(rgb), "shape": list(rgb.shape)}


def _stat_key(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_size}:{int(st.st_mtime)}"


def hash_files(paths: list[str], cache_file: Path | None = None, workers: int = 2,
               progress: bool = True, on_item: Callable[[int, int], None] | None = None) -> dict[str, dict]:
    """Pixel sha256 + pHash per file, cached by (path, size, mtime) in `cache_file`; ``on_item(done,
    total)`` is called after each file hashed (a heartbeat for long runs on a cold cache)."""
    cache: dict = {}
    if cache_file and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except Exception:
            cache = {}
    out: dict[str, dict] = {}
    todo = []
    for p in paths:
        try:
            key = _stat_key(p)
        except OSError as exc:
            out[p] = {"error": f"missing: {exc}"}
            continue
        c = cache.get(p)
        if c and c.get("key") == key and "error" not in c:
            out[p] = c
        else:
            todo.append((p, key))
    if todo:
        it = [p for p, _ in todo]
        if workers > 1 and len(it) > 64:
            with imap(hash_file, it, workers) as results:
                if progress:
                    from tqdm import tqdm

                    results = tqdm(results, total=len(it), desc="hashing images", unit="img")
                res_list = list(counted(results, len(it), on_item))
        else:
            res_list = list(counted(map(hash_file, it), len(it), on_item))
        for (p, key), r in zip(todo, res_list):
            r = dict(r, key=key)
            out[p] = r
            cache[p] = r
        if cache_file:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache))
            tmp.replace(cache_file)
    return out


def near_duplicate_pairs(hashes: list[int], max_dist: int = PHASH_NEAR) -> list[tuple[int, int, int]]:
    """All (i, j, distance) with i < j and Hamming distance <= max_dist."""
    h = np.array(hashes, dtype=np.uint64)
    pairs = []
    for start in range(0, len(h), 512):
        blk = h[start:start + 512]
        d = np.bitwise_count(blk[:, None] ^ h[None, :])
        ii, jj = np.nonzero(d <= max_dist)
        for i, j in zip(ii, jj):
            gi = start + int(i)
            if gi < int(j):
                pairs.append((gi, int(j), int(d[i, j])))
    return pairs


class _UF:
    def __init__(self):
        self.p: dict = {}

    def find(self, x):
        self.p.setdefault(x, x)
        while self.p[x] != x:
            self.p[x] = self.p[self.p[x]]
            x = self.p[x]
        return x

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if rb < ra:
                ra, rb = rb, ra
            self.p[rb] = ra


# ----------------------------------------------------------------------------- audit
@dataclass
class AuditResult:
    records: list[ImageRecord]  # cleaned: one record per identity
    groups: dict[str, str]  # isic_id -> split group id
    report: dict
    problems: list[Problem] = field(default_factory=list)
    # isic_id -> the other ids merged into it (identical pixels): a frozen-benchmark image may
    # hide under any of them (training.benchmark)
    aliases: dict[str, list[str]] = field(default_factory=dict)


def data_fingerprint(records: list[ImageRecord]) -> str:
    items = sorted((r.isic_id, r.label) for r in records)
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def _resolve_identity(recs: list[ImageRecord]) -> tuple[ImageRecord | None, str]:
    """Apply the label policy to all records of one identity -> (record or None, decision)."""
    sets = [r.allowed for r in recs]
    inter = frozenset.intersection(*sets)
    ham = [r for r in recs if r.source in HAM_SOURCES]
    base = ham[0] if ham else recs[0]
    sources = "+".join(sorted({r.source for r in recs}))
    folder_classes = {r.folder_class for r in recs if r.folder_class}
    folder = sorted(folder_classes)[0] if len(folder_classes) == 1 else None
    split_folders = sorted({r.split_folder for r in recs if r.split_folder})
    extra = dict(source=sources, folder_class=folder, split_folder="+".join(split_folders) or None)
    if len(recs) == 1:
        return recs[0], "single"
    if inter:
        return base.with_(allowed=inter, ham_code=ham_code_of(inter), **extra), "merged_agree"
    histo = [r for r in ham if r.dx_type == "histo"]
    if histo:
        h = histo[0]
        refined = frozenset(c for c in folder_classes if c in h.allowed) or h.allowed
        if len(refined) > 1 and len(folder_classes & h.allowed) == 0:
            refined = h.allowed
        return h.with_(allowed=refined, ham_code=h.ham_code, **extra), "histo_wins"
    return None, "dropped_conflict"


def audit_records(load: LoadResult, cache_file: Path | None = None, workers: int = 2,
                  progress: bool = True, on_item: Callable[[int, int], None] | None = None) -> AuditResult:
    recs = list(load.records)
    problems = list(load.problems)
    hashes = hash_files([r.path for r in recs], cache_file=cache_file, workers=workers, progress=progress,
                        on_item=on_item)
    ok: list[ImageRecord] = []
    for r in recs:
        h = hashes.get(r.path, {})
        if "error" in h:
            kind = "missing_file" if h["error"].startswith("missing") else "unreadable_image"
            problems.append(Problem(kind, r.path, h["error"]))
            log.warning("data problem: %s %s", kind, r.path)
        else:
            ok.append(r)
    recs = ok

    # --- findings
    by_id: dict[str, list[ImageRecord]] = defaultdict(list)
    for r in recs:
        by_id[r.isic_id].append(r)
    dup_ids = {k: v for k, v in by_id.items() if len(v) > 1}
    isic_by_id = {k: [r for r in v if r.source == SRC_ISIC] for k, v in by_id.items()}
    isic_dup_ids = sorted(k for k, v in isic_by_id.items() if len(v) > 1)
    isic_conflicting_folders = sorted(
        k for k, v in isic_by_id.items() if len({r.folder_class for r in v}) > 1)
    train_test_shared = sorted(
        k for k, v in isic_by_id.items() if len({r.split_folder for r in v}) > 1)
    in_both = sorted(k for k, v in by_id.items() if len({r.source for r in v}) > 1)
    conflicting_labels = sorted(
        k for k, v in by_id.items() if not frozenset.intersection(*[r.allowed for r in v]))
    cross_dataset_label_diff = sorted(
        k for k in in_both if not frozenset.intersection(*[r.allowed for r in by_id[k]]))

    by_sha: dict[str, list[ImageRecord]] = defaultdict(list)
    for r in recs:
        by_sha[hashes[r.path]["sha"]].append(r)
    pixel_dup_groups = [v for v in by_sha.values() if len(v) > 1]
    pixel_dup_diff_ids = [sorted({r.isic_id for r in v}) for v in pixel_dup_groups
                          if len({r.isic_id for r in v}) > 1]

    # --- identities: same id, or identical pixels
    uf = _UF()
    for r in recs:
        uf.find(r.isic_id)
    for v in pixel_dup_groups:
        for r in v[1:]:
            uf.union(v[0].isic_id, r.isic_id)
    ident: dict[str, list[ImageRecord]] = defaultdict(list)
    for r in recs:
        ident[uf.find(r.isic_id)].append(r)

    # --- near duplicates across records (pHash), at different sizes too
    ph = [hashes[r.path]["phash"] for r in recs]
    pairs = near_duplicate_pairs(ph)
    near_diff: list[dict] = []
    seen = set()
    for i, j, d in pairs:
        a, b = recs[i], recs[j]
        ia, ib = uf.find(a.isic_id), uf.find(b.isic_id)
        if ia != ib and (ia, ib) not in seen:
            seen.add((ia, ib))
            near_diff.append({"a": a.isic_id, "b": b.isic_id, "distance": d,
                              "labels": [a.label, b.label]})
    same_id_far = []
    for k in in_both:
        v = by_id[k]
        hs = [hashes[r.path]["phash"] for r in v]
        dmax = max(int(np.bitwise_count(np.uint64(x) ^ np.uint64(y))) for x in hs for y in hs)
        if dmax > 12:
            same_id_far.append({"id": k, "max_phash_distance": dmax})

    # --- resolve
    decisions: dict[str, str] = {}
    dropped: list[dict] = []
    clean: list[ImageRecord] = []
    for root, v in sorted(ident.items()):
        rec, decision = _resolve_identity(v)
        decisions[root] = decision
        if rec is None:
            dropped.append({"id": root, "labels": sorted({r.label for r in v}),
                            "sources": sorted({r.source for r in v})})
            log.info("dropping conflicting identity %s: %s", root, sorted({r.label for r in v}))
            continue
        if rec.isic_id != root:
            rec = rec.with_(isic_id=root)
        clean.append(rec)
    clean.sort(key=lambda r: r.isic_id)

    # --- split groups: lesion ids unioned over identities and near-duplicates
    g = _UF()
    for root, v in ident.items():
        for r in v:
            # a lesion id of its own (HAM10000's; the app's reviewed images carry their patient's,
            # "app-patient-N"; an ISIC-folder image's is its image id): every image of it in one group
            if r.lesion_id and r.lesion_id != r.isic_id:
                g.union("L:" + root, "H:" + r.lesion_id)
        g.find("L:" + root)
    for nd in near_diff:
        g.union("L:" + uf.find(nd["a"]), "L:" + uf.find(nd["b"]))
    groups = {r.isic_id: g.find("L:" + r.isic_id) for r in clean}
    aliases = {root: sorted({r.isic_id for r in v} - {root}) for root, v in ident.items()
               if root in groups and len({r.isic_id for r in v}) > 1}

    ids_clean = [r.isic_id for r in clean]
    assert len(ids_clean) == len(set(ids_clean)), "identity appears twice in the cleaned set"
    dec_counts = Counter(decisions.values())
    report = {
        "policy": POLICY,
        "counts": {
            "records_loaded": len(load.records),
            "records_readable": len(recs),
            "records_by_source": dict(Counter(r.source for r in recs)),
            "problems": dict(Counter(p.kind for p in problems)),
            "duplicate_ids": len(dup_ids),
            "isic_duplicate_ids": len(isic_dup_ids),
            "isic_same_id_conflicting_folders": len(isic_conflicting_folders),
            "isic_ids_in_train_and_test": len(train_test_shared),
            "ids_in_both_datasets": len(in_both),
            "ids_in_both_datasets_label_disagree": len(cross_dataset_label_diff),
            "ids_in_both_datasets_pixels_differ_a_lot": len(same_id_far),
            "ids_with_conflicting_labels": len(conflicting_labels),
            "pixel_duplicate_groups": len(pixel_dup_groups),
            "pixel_duplicates_with_different_ids": len(pixel_dup_diff_ids),
            "near_duplicate_pairs_different_identity": len(near_diff),
            "identities": len(ident),
            "resolution": dict(dec_counts),
            "dropped_conflicting": len(dropped),
            "clean_images": len(clean),
            "clean_lesion_groups": len(set(groups.values())),
            "clean_by_label": dict(sorted(Counter(r.label for r in clean).items())),
            "clean_by_ham_code": dict(sorted(Counter(r.ham_code for r in clean).items())),
        },
        "data_fingerprint": data_fingerprint(clean),
        "details": {
            "isic_duplicate_ids": isic_dup_ids,
            "isic_same_id_conflicting_folders": isic_conflicting_folders,
            "isic_ids_in_train_and_test": train_test_shared,
            "ids_in_both_datasets": in_both,
            "ids_in_both_datasets_label_disagree": cross_dataset_label_diff,
            "ids_in_both_datasets_pixels_differ_a_lot": same_id_far,
            "ids_with_conflicting_labels": conflicting_labels,
            "pixel_duplicates_with_different_ids": pixel_dup_diff_ids,
            "near_duplicates_different_identity": near_diff,
            "histo_wins": sorted(k for k, d in decisions.items() if d == "histo_wins"),
            "dropped_conflicting": dropped,
            "problems": [p.to_dict() for p in problems],
        },
    }
    return AuditResult(records=clean, groups=groups, report=report, problems=problems, aliases=aliases)


def run_audit(data_root: Path, cache_dir: Path | None = None, workers: int = 2,
              progress: bool = True) -> AuditResult:
    load = load_all(Path(data_root))
    cf = (Path(cache_dir) / "image_hashes.json") if cache_dir else None
    return audit_records(load, cache_file=cf, workers=workers, progress=progress)


def report_markdown(report: dict) -> str:
    c = report["counts"]
    lines = ["# Data audit", "", f"Data fingerprint: `{report['data_fingerprint']}`", "",
             "## Counts", "", "| item | count |", "|---|---|"]
    for k, v in c.items():
        if isinstance(v, dict):
            v = ", ".join(f"{kk}: {vv}" for kk, vv in v.items()) or "-"
        lines.append(f"| {k.replace('_', ' ')} | {v} |")
    lines += ["", "## Resolution policy", "", report["policy"], ""]
    d = report["details"]
    if d["dropped_conflicting"]:
        lines += ["## Dropped (conflicting labels, no histopathology)", ""]
        for x in d["dropped_conflicting"][:200]:
            lines.append(f"- {x['id']}: {', '.join(x['labels'])} ({', '.join(x['sources'])})")
        lines.append("")
    if d["problems"]:
        lines += ["## Problems", ""]
        for p in d["problems"][:200]:
            lines.append(f"- {p['kind']}: {p['path']} {p['detail']}")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    j = out_dir / "audit.json"
    m = out_dir / "audit.md"
    j.write_text(json.dumps(report, indent=1, default=str))
    m.write_text(report_markdown(report))
    return j, m
