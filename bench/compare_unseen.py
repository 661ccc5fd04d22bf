"""Two model artifacts trained on different splits, compared fairly: on the validation and test
images of the NEW model's split that the OLD model neither trained nor was calibrated on (by image
and by lesion group). Prints JSON; lesion-level bootstrap CIs.

    python bench/compare_unseen.py --old DIR --new DIR
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from mlcore.model_store import load_model
    from training.audit import run_audit
    from training.cache import load_images
    from mlcore.clinical import contexts_of
    from training.config import cache_dir, data_dir
    from training.evaluate import evaluate_probs
    from mlcore.labels import mask_from_classes
    from mlcore.scoring import softmax_with_temperature
    from training.subgroups import lesion_ids_of

    ap = argparse.ArgumentParser()
    ap.add_argument("--old", type=Path, required=True)
    ap.add_argument("--new", type=Path, required=True)
    ap.add_argument("--bootstrap", type=int, default=500)
    a = ap.parse_args()
    old, new = load_model(a.old), load_model(a.new)
    audit = run_audit(data_dir(), cache_dir(), progress=False)
    by = {r.isic_id: r for r in audit.records}
    seen = {i for s in ("train", "val") for i in old.card["split_ids"][s] if i in by}
    seen_groups = {by[i].lesion_id for i in seen} | {audit.groups.get(i) for i in seen}
    out = {"old": old.version, "new": new.version}
    for split in ("val", "test"):
        ids = [i for i in new.card["split_ids"][split]
               if i not in seen and by[i].lesion_id not in seen_groups and audit.groups.get(i) not in seen_groups]
        recs = [by[i] for i in ids]
        masks = np.stack([mask_from_classes(r.allowed) for r in recs])
        res = {"images": len(ids), "melanomas": int(masks[:, 3].sum())}
        for name, m in (("old", old), ("new", new)):
            imgs = load_images([r.path for r in recs], m.input_size, cache_dir(), framing=m.framing)
            logits = m.predict_logits(imgs.astype(np.float32))
            if m.clinical is not None:
                logits = m.clinical.apply(logits, contexts_of(recs))
            e = evaluate_probs(softmax_with_temperature(logits, m.temperature), masks, m.thresholds,
                               n_boot=a.bootstrap, seed=0, lesions=lesion_ids_of(recs, audit.groups))
            op = e["operating_points"]["melanoma"]
            res[name] = {k: e[k] for k in ("melanoma_auc", "melanoma_auc_ci95", "malignancy_auc",
                                           "balanced_accuracy_7")} | {
                "melanoma_sensitivity": op["sensitivity"], "melanoma_specificity": op["specificity"]}
        out[split] = res
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
