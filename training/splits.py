"""Lesion-grouped, label-stratified, seeded train/validation/test split."""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping

import numpy as np

from .data import ImageRecord


def split_by_lesion(records: list[ImageRecord], groups: dict[str, str] | None = None, *,
                    seed: int = 1234, val_fraction: float = 0.15,
                    test_fraction: float = 0.15, test_only: Iterable[str] = (),
                    pinned: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Return {'train','val','test'} -> sorted ISIC ids. All images of a group (lesion) land in
    the same split; groups are stratified by the label (allowed-class set) of their first image.

    ``test_only`` groups (the frozen benchmark's, ``training.benchmark.frozen_groups``) always go
    to test and count towards each stratum's test share first; the other groups are dealt out in
    the same shuffled order as without them. So where those groups are exactly the test split
    this seed would draw anyway (the shipped model's data and seed), the split does not change.

    ``pinned`` (ISIC id -> split) keeps the split a warm-started network was trained on: a group
    with a pinned image goes where its images were (to train when any of them was trained on, so
    no image the network has learned is ever validated or tested on) and counts towards its
    stratum's shares first; only the new groups are dealt out."""
    test_only = frozenset(test_only)
    pinned = dict(pinned or {})
    groups = groups or {r.isic_id: r.lesion_id for r in records}
    members: dict[str, list[ImageRecord]] = defaultdict(list)
    for r in records:
        members[groups.get(r.isic_id, r.lesion_id)].append(r)
    strata: dict[str, list[str]] = defaultdict(list)
    for g, rs in members.items():
        key = sorted(rs, key=lambda r: r.isic_id)[0].label
        strata[key].append(g)
    fixed = {g: "test" for g in members if g in test_only}
    for g, rs in members.items():
        was = {pinned[r.isic_id] for r in rs if r.isic_id in pinned}
        if g not in fixed and was:
            fixed[g] = next(k for k in ("train", "val", "test") if k in was)
    rng = np.random.default_rng(seed)
    out = {"train": [], "val": [], "test": []}
    for key in sorted(strata):
        gs = sorted(strata[key])
        rng.shuffle(gs)
        n = sum(len(members[g]) for g in gs)
        n_test, n_val = test_fraction * n, val_fraction * n
        c_test = sum(len(members[g]) for g in gs if fixed.get(g) == "test")
        c_val = sum(len(members[g]) for g in gs if fixed.get(g) == "val")
        for g in gs:
            size = len(members[g])
            if g in fixed:
                dest = fixed[g]
            elif c_test + size / 2 <= n_test and n >= 3:
                dest, c_test = "test", c_test + size
            elif c_val + size / 2 <= n_val and n >= 3:
                dest, c_val = "val", c_val + size
            else:
                dest = "train"
            out[dest].extend(r.isic_id for r in members[g])
    return {k: sorted(v) for k, v in out.items()}
