"""Re-evaluating a saved artifact resamples the audit's split groups in its CIs, as training did."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

import mlcore.model_store
import training.audit
import training.cache
import training.evaluate
from mlcore.labels import CLASSES
from mlcore.scoring import Thresholds
from training.audit import AuditResult
from training.data import ImageRecord
from training.evaluate_artifact import evaluate_artifact


def test_near_duplicates_of_one_lesion_are_one_draw_in_the_confidence_intervals(tmp_path, monkeypatch):
    recs = [ImageRecord(path="", isic_id=i, lesion_id=lesion, allowed=frozenset({"nevus"}), source="x")
            for i, lesion in (("ISIC_1", "HAM_1"), ("ISIC_2", "HAM_2"), ("ISIC_3", "HAM_3"))]
    # 1 and 2: near-duplicates filed under different lesion ids, one split group for the audit
    audit = AuditResult(records=recs, groups={"ISIC_1": "L:ISIC_1", "ISIC_2": "L:ISIC_1", "ISIC_3": "L:ISIC_3"},
                        report={"data_fingerprint": "fp"})
    model = SimpleNamespace(card={"split_ids": {"test": ["ISIC_1", "ISIC_2", "ISIC_3"]}, "data_fingerprint": "fp"},
                            input_size=8, framing=None, clinical=None, temperature=1.0, model_dir=tmp_path,
                            version="v-test", thresholds=Thresholds(melanoma=0.5, malignancy=0.5),
                            predict_logits=lambda images, batch_size: np.zeros((len(images), len(CLASSES))))
    seen = {}

    def evaluate_probs(probs, masks, thresholds, **kwargs):
        seen.update(kwargs)
        return {"subgroups": {}}

    monkeypatch.setattr(mlcore.model_store, "load_model", lambda model_dir: model)
    monkeypatch.setattr(training.audit, "run_audit", lambda data_root, cache_dir: audit)
    monkeypatch.setattr(training.cache, "load_images", lambda paths, *a, **k: np.zeros((len(paths), 8, 8, 3)))
    monkeypatch.setattr(training.evaluate, "evaluate_probs", evaluate_probs)

    out = evaluate_artifact(tmp_path, Path("data"), None, n_boot=10)
    assert out["data_fingerprint_matches"]
    lesions = list(seen["lesions"])
    assert lesions[0] == lesions[1] != lesions[2]
