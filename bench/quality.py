"""Re-evaluate a model artifact on its recorded held-out split; print JSON with CIs and targets.

    python bench/quality.py [--model DIR] [--split test] [--plots DIR] [--image-only]
Exit code 0 always (targets are reported, not enforced) unless --strict.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGETS = {"melanoma_auc": 0.90, "malignancy_auc": 0.90, "balanced_accuracy_7": 0.70,
           "melanoma_sensitivity": 0.90, "melanoma_specificity": 0.70}


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from classifier.model_store import default_model_dir
    from training.config import cache_dir, data_dir
    from training.evaluate_artifact import evaluate_artifact

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--split", default="test")
    ap.add_argument("--plots", type=Path, default=None)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--image-only", action="store_true",
                    help="ignore the model's clinical-context adjustment (thresholds were chosen with it)")
    a = ap.parse_args()
    res = evaluate_artifact(a.model or default_model_dir(), data_dir(), cache_dir(), split=a.split,
                            plots_dir=a.plots, n_boot=a.bootstrap, clinical=not a.image_only)
    m = res["metrics"]
    mel_op = m["operating_points"]["melanoma"]
    got = {"melanoma_auc": m["melanoma_auc"], "malignancy_auc": m["malignancy_auc"],
           "balanced_accuracy_7": m["balanced_accuracy_7"], "melanoma_sensitivity": mel_op["sensitivity"],
           "melanoma_specificity": mel_op["specificity"]}
    res["targets"] = {k: {"target": t, "value": got[k], "met": bool(got[k] is not None and got[k] >= t)}
                      for k, t in TARGETS.items()}
    res["all_targets_met"] = all(v["met"] for v in res["targets"].values())
    print(json.dumps(res, indent=1))
    return 1 if a.strict and not res["all_targets_met"] else 0


if __name__ == "__main__":
    sys.exit(main())
