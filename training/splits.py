"""Lesion-grouped, label-stratified, seeded train/validation/test split."""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np

from .data import ImageRecord


def split_by_lesion(records: list[ImageRecord], groups: dict[str, str] | None = None, *,
                    seed: int = 1234, val_fraction: float = 0.15,
                    test_fraction: float = 0.15, test_only: Iterable[str] = ()) -> dict[str, list[str]]:
    """Return {'train','val','test'} -> sorted ISIC ids. All images of a group (lesion) land in
    the same split; groups are stratified by the label (allowed-class set) of their first image.

    ``test_only`` groups (the frozen benchmark's, ``training.benchmark.frozen_groups``) always go
    to test and count towards each stratum's test share first; the other groups are dealt out in
    the same shuffled order as without them. So where those groups are exactly the test split
    this seed would draw anyway (the shipped model's data and seed), the split does not change."""
    test_only = frozenset(test_only)
    groups = groups or {r.isic_id: r.lesion_id for r in records}
    members: dict[str, list[ImageRecord]] = defaultdict(list)
    for r in records:
        members[groups.get(r.isic_id, r.lesion_id)].append(r)
    strata: dict[str, list[str]] = defaultdict(list)
    for g, rs in members.items():
        key = sorted(rs, key=lambda r: r.isic_id)[0].label
        strata[key].append(g)
    rng = np.random.default_rng(seed)
    out = {"train": [], "val": [], "test": []}
    for key in sorted(strata):
        gs = sorted(strata[key])
        rng.shuffle(gs)
        n = sum(len(members[g]) for g in gs)
        n_test, n_val = test_fraction * n, val_fraction * n
        c_test = sum(len(members[g]) for g in gs if g in test_only)
        c_val = 0
        for g in gs:
            size = len(members[g])
            if g in test_only:
                dest = "test"
            elif c_test + size / 2 <= n_test and n >= 3:
                dest, c_test = "test", c_test + size
            elif c_val + size / 2 <= n_val and n >= 3:
                dest, c_val = "val", c_val + size
            else:
                dest = "train"
            out[dest].extend(r.isic_id for r in members[g])
    return {k: sorted(v) for k, v in out.items()}
