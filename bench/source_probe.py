"""How visible is a collection to a model? Prints JSON with:
- the validation AUC of a linear probe (standardised logistic regression, fitted on the training
  split's penultimate ``gap`` features) that tells the ISIC-archive-only images from the rest,
  on all validation images and on the benign ones alone (so it is not just "melanoma or not");
- the out-of-domain detector's unfamiliar rate per source on validation.

    python bench/source_probe.py [--model DIR]

A high probe AUC says the model's features encode which collection an image comes from, which is
how a collection's class mix (the archive's copies are 54 % melanomas) can stand in for the
diagnosis. Reads only the recorded training and validation splits (never PH2).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ARCHIVE = "isic-9class"  # the images that are only in the ISIC archive's 9-class folders


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mlcore import ood
    from mlcore.model_store import load_model
    from training.assessment import logits_and_features
    from training.audit import run_audit
    from training.cache import load_images
    from training.config import cache_dir, data_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(Path(__file__).resolve().parent.parent / "classifier" / "shipped_model"))
    args = ap.parse_args()
    m = load_model(Path(args.model))
    by_id = {r.isic_id: r for r in run_audit(data_dir(), cache_dir()).records}
    split = {}
    for name in ("train", "val"):
        recs = [by_id[i] for i in m.card["split_ids"][name]]
        images = load_images([r.path for r in recs], m.input_size, cache_dir(), framing=m.framing)
        split[name] = (recs, logits_and_features(m.keras_model, images, tta=m.tta)[1])
    if split["train"][1] is None:
        raise SystemExit(f"{m.version} has no feature layer to probe")
    gap = ood.feature_widths(m.keras_model)[-1]  # the last group is the penultimate features
    (tr_recs, tr_feats), (va_recs, va_feats) = split["train"], split["val"]
    is_archive = lambda recs: np.array([r.source == ARCHIVE for r in recs])  # noqa: E731
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    probe.fit(tr_feats[:, -gap:], is_archive(tr_recs))
    score = probe.predict_proba(va_feats[:, -gap:])[:, 1]
    y = is_archive(va_recs)
    benign = np.array(["melanoma" not in r.allowed for r in va_recs])
    out = {"model_version": m.version,
           "probe_auc_archive_vs_rest": round(float(roc_auc_score(y, score)), 3),
           "probe_auc_benign_only": round(float(roc_auc_score(y[benign], score[benign])), 3),
           "archive_val_images": int(y.sum()), "archive_benign_val_images": int((y & benign).sum())}
    detector = m.ood_detector
    if detector is not None:
        unfamiliar = detector.unfamiliar(va_feats)
        sources = np.array([r.source for r in va_recs], dtype=object)
        out["unfamiliar_rate_by_source"] = {s: {"images": int((sources == s).sum()),
                                                "unfamiliar": round(float(unfamiliar[sources == s].mean()), 3)}
                                            for s in sorted(set(sources))}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
