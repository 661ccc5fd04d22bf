import numpy as np
import pytest

from mlcore.labels import CLASSES, mask_from_classes
from mlcore.scoring import Thresholds
from training.subgroups import age_band, subgroup_labels, subgroup_report

MEL, NEV = CLASSES.index("melanoma"), CLASSES.index("nevus")


def _probs(mel_p):
    p = np.zeros((len(mel_p), len(CLASSES)))
    p[:, MEL] = mel_p
    p[:, NEV] = 1 - np.asarray(mel_p)
    return p


def test_age_bands():
    assert [age_band(a) for a in (None, float("nan"), 5, 30, 49.9, 50, 85)] == [
        "unknown", "unknown", "<30", "30-49", "30-49", "50-69", "70+"]


def test_report_per_group_with_too_small_groups_left_empty():
    # group a: 6 melanomas scored 0.9, 6 nevi scored 0.1 -> AUC 1, sens 1, spec 1 at 0.5
    # group b: 2 melanomas (too few) and 6 nevi, one nevus above the threshold -> spec 5/6
    mel_a, nev_a = [0.9] * 6, [0.1] * 6
    mel_b, nev_b = [0.2, 0.8], [0.1] * 5 + [0.7]
    probs = _probs(mel_a + nev_a + mel_b + nev_b)
    masks = np.stack([mask_from_classes({"melanoma" if i < 6 or 12 <= i < 14 else "nevus"}) for i in range(20)])
    groups = {"sex": ["female"] * 12 + ["male"] * 8}
    rep = subgroup_report(probs, masks, Thresholds(melanoma=0.5, malignancy=0.5), groups, min_cases=5)
    a, b = rep["sex"]["female"], rep["sex"]["male"]
    assert a["n"] == 12 and a["n_melanoma_positive"] == 6
    assert a["melanoma_auc"] == 1.0 and a["melanoma_sensitivity"] == 1.0 and a["melanoma_specificity"] == 1.0
    assert b["n"] == 8 and b["n_melanoma_positive"] == 2
    assert b["melanoma_auc"] is None and b["melanoma_sensitivity"] is None
    assert b["melanoma_specificity"] == pytest.approx(5 / 6)


def test_labels_must_match_the_images():
    with pytest.raises(ValueError, match="3 labels for 2 images"):
        subgroup_report(_probs([0.1, 0.9]), np.stack([mask_from_classes({"nevus"})] * 2),
                        Thresholds(0.5, 0.5), {"site": ["a", "b", "c"]})


def test_labels_from_records():
    class R:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    recs = [R(source="ham10000", sex="male", age=62.0, site="back"),
            R(source="isic-9class", sex=None, age=None, site=None)]
    assert subgroup_labels(recs) == {"source": ["ham10000", "isic-9class"], "sex": ["male", "unknown"],
                                     "age": ["50-69", "unknown"], "site": ["back", "unknown"]}
