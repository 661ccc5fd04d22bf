import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.audit import audit_records, write_report
from training.data import load_all
from mlcore.labels import HAM_TO_CLASSES
from training.splits import split_by_lesion


def _img(path: Path, seed: int, size: int = 40):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).resize((size, size), Image.NEAREST).save(path, quality=95)


@pytest.fixture
def fake_data(tmp_path):
    root = tmp_path / "data"
    isic = root / "isic-9class"
    # 1: plain; 2: same id in two class folders (conflict, no HAM) -> dropped
    _img(isic / "Train" / "melanoma" / "ISIC_0000001.jpg", 1)
    _img(isic / "Train" / "melanoma" / "ISIC_0000002.jpg", 2)
    _img(isic / "Train" / "nevus" / "ISIC_0000002.jpg", 2)
    # 3: in Train and Test, same class -> merged
    _img(isic / "Train" / "nevus" / "ISIC_0000003.jpg", 3)
    _img(isic / "Test" / "nevus" / "ISIC_0000003.jpg", 3)
    # 4: ISIC folder "actinic keratosis", HAM akiec (agree -> {actinic keratosis})
    _img(isic / "Train" / "actinic keratosis" / "ISIC_0000004.jpg", 4, size=30)
    # 5: ISIC melanoma, HAM bkl histo -> HAM wins
    _img(isic / "Train" / "melanoma" / "ISIC_0000005.jpg", 5, size=30)
    # unknown class folder, unreadable image
    _img(isic / "Train" / "mystery" / "ISIC_0000006.jpg", 6)
    (isic / "Train" / "nevus" / "ISIC_0000007.jpg").write_bytes(b"not a jpeg at all")
    # 8: pixel duplicate under a different id (copy suffix and other id)
    _img(isic / "Train" / "dermatofibroma" / "ISIC_0000008.jpg", 8)
    _img(isic / "Train" / "dermatofibroma" / "ISIC_0000099.jpg", 8)
    ham = root / "ham10000"
    rows = [("HAM_1", "ISIC_0000004", "akiec", "histo"), ("HAM_2", "ISIC_0000005", "bkl", "histo"),
            ("HAM_3", "ISIC_0000010", "nv", "follow_up"), ("HAM_3", "ISIC_0000011", "nv", "follow_up"),
            ("HAM_4", "ISIC_0000012", "mel", "histo"), ("HAM_5", "ISIC_0000013", "zzz", "histo"),
            ("HAM_6", "ISIC_0000014", "bcc", "histo")]
    for i, (_, iid, _, _) in enumerate(rows):
        if iid != "ISIC_0000014":  # missing file
            _img(ham / "images" / f"{iid}.jpg", 100 + i if iid not in ("ISIC_0000004", "ISIC_0000005") else int(iid[-1]), size=48)
    with (ham / "HAM10000_metadata.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"])
        for les, iid, dx, dxt in rows:
            w.writerow([les, iid, dx, dxt, "50.0", "male", "back"])
    return root


def test_loaders_report_problems(fake_data):
    res = load_all(fake_data)
    kinds = sorted(p.kind for p in res.problems)
    assert kinds.count("unknown_class") == 2  # folder 'mystery' and dx 'zzz'
    assert "unreadable_image" in kinds and "missing_file" in kinds
    ham = [r for r in res.records if r.source == "ham10000"]
    r4 = next(r for r in ham if r.isic_id == "ISIC_0000004")
    assert r4.allowed == HAM_TO_CLASSES["akiec"] and r4.lesion_id == "HAM_1" and r4.dx_type == "histo"
    assert r4.age == 50.0 and r4.sex == "male" and r4.site == "back"
    isic1 = next(r for r in res.records if r.isic_id == "ISIC_0000001")
    assert isic1.lesion_id == "ISIC_0000001" and isic1.allowed == {"melanoma"}


def test_audit_policy(fake_data, tmp_path):
    res = audit_records(load_all(fake_data), cache_file=tmp_path / "h.json", workers=1, progress=False)
    ids = [r.isic_id for r in res.records]
    assert len(ids) == len(set(ids))
    by = {r.isic_id: r for r in res.records}
    assert "ISIC_0000002" not in by  # conflict, dropped
    assert by["ISIC_0000003"].allowed == {"nevus"}
    assert by["ISIC_0000004"].allowed == {"actinic keratosis"}  # agreement refines akiec
    assert by["ISIC_0000004"].lesion_id == "HAM_1" and "+" in by["ISIC_0000004"].source
    assert by["ISIC_0000005"].allowed == HAM_TO_CLASSES["bkl"]  # histo HAM wins
    assert ("ISIC_0000008" in by) != ("ISIC_0000099" in by)  # pixel duplicate kept once
    c = res.report["counts"]
    assert c["isic_same_id_conflicting_folders"] == 1
    assert c["isic_ids_in_train_and_test"] == 1
    assert c["ids_in_both_datasets"] == 2
    assert c["pixel_duplicates_with_different_ids"] == 1
    assert c["dropped_conflicting"] == 1
    assert c["resolution"]["histo_wins"] == 1
    j, m = write_report(res.report, tmp_path / "rep")
    assert j.is_file() and "Resolution policy" in m.read_text()
    # same HAM lesion -> same split group
    assert res.groups["ISIC_0000010"] == res.groups["ISIC_0000011"]


def test_every_reviewed_app_image_of_a_patient_is_one_split_group(fake_data, tmp_path):
    """Dermatologist-reviewed uploads carry their patient as the group: two images of one patient
    (far apart, not near-duplicates) must fall on one side of the split, like a HAM10000 lesion's."""
    from training.data import ImageRecord

    load = load_all(fake_data)
    for i, seed in enumerate((101, 202)):
        _img(tmp_path / f"review-{i}.png", seed)
        load.records.append(ImageRecord(path=str(tmp_path / f"review-{i}.png"), isic_id=f"REVIEW_000000{i}",
                                        lesion_id="app-patient-7", allowed=frozenset({"melanoma"}), source="review",
                                        ham_code="mel"))
    res = audit_records(load, cache_file=tmp_path / "h.json", workers=1, progress=False)
    assert res.groups["REVIEW_0000000"] == res.groups["REVIEW_0000001"]
    # an ISIC-folder image (its lesion id is its own id) stays a group of its own
    assert res.groups["ISIC_0000001"] not in {g for k, g in res.groups.items() if k != "ISIC_0000001"}


def test_split_by_lesion_is_grouped_seeded_and_disjoint():
    from training.data import ImageRecord

    recs = []
    for i in range(300):
        les = f"L{i // 3}"
        cls = ["melanoma", "nevus", "basal cell carcinoma"][i % 3 if i < 150 else 1]
        recs.append(ImageRecord(path="", isic_id=f"I{i:04d}", lesion_id=les, allowed=frozenset({cls}), source="x"))
    s1 = split_by_lesion(recs, seed=1)
    s2 = split_by_lesion(recs, seed=1)
    assert s1 == s2
    assert sum(len(v) for v in s1.values()) == 300
    les_of = {r.isic_id: r.lesion_id for r in recs}
    seen = {}
    for k, ids in s1.items():
        for i in ids:
            assert seen.setdefault(les_of[i], k) == k
    assert 30 < len(s1["test"]) < 60 and 30 < len(s1["val"]) < 60


def test_the_bootstrap_draws_near_duplicates_of_one_lesion_together():
    """Test-split CIs resample the audit's split groups: two near-duplicate copies filed under
    different lesion ids are one draw, as in the promotion gate; without groups, lesion ids."""
    from training.data import ImageRecord
    from training.subgroups import lesion_ids_of

    recs = [ImageRecord(path="", isic_id=i, lesion_id=lesion, allowed=frozenset({"nevus"}), source="x")
            for i, lesion in (("ISIC_1", "HAM_1"), ("ISIC_2", "HAM_2"), ("ISIC_3", "HAM_3"))]
    groups = {"ISIC_1": "L:ISIC_1", "ISIC_2": "L:ISIC_1"}  # 1 and 2 are near-duplicates
    ids = lesion_ids_of(recs, groups)
    assert ids[0] == ids[1] != ids[2] and ids[2] == "HAM_3"
    assert list(lesion_ids_of(recs)) == ["HAM_1", "HAM_2", "HAM_3"]
