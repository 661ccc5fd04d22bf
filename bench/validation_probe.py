"""A trained network on validation under variants that need no training: another clinical offset,
another input size, another test-time augmentation. Prints one JSON line per variant with the
validation selection figures (melanoma AUC, malignancy AUC, balanced accuracy over the 7 HAM codes,
their mean, the ISIC-archive melanoma AUC, the recall of each HAM code), the temperature and
thresholds refitted on validation as `python -m training recalibrate` does:

    python bench/validation_probe.py --model DIR [--offset own none prior DIR ...] [--input-size 160 ...]
                                     [--tta none flip2] [--ensemble-with DIR ...]

``--offset``: ``own`` (the artifact's clinical offset), ``none`` (the image alone), ``prior`` (the
context-only model's log-likelihood ratio, fitted on the training split's labels:
``mlcore.clinical.prior_ratio``), ``prior-known`` (the same, fitted on the training images that carry
context only), or another artifact whose offset is applied to this network's logits. ``--input-size``: the same weights in
the network rebuilt for that input (MobileNetV2 is convolutional up to its global pooling).
``--ensemble-with``: the mean of this network's logits and those of other artifacts trained on the
same lesion split (same views and size), as `python -m training ensemble` combines them.
Reads only the recorded validation split: use it to decide whether an experiment is worth its
training time, never for test or PH2 figures.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ARCHIVE = "isic-9class"
CROSSFIT = ("val-crossfit", "own+val-crossfit")


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from mlcore.clinical import contexts_of, prior_ratio
    from mlcore.keras_model import TTA_MODES, predict_logits
    from mlcore.labels import mask_from_classes
    from mlcore.model_store import load_model
    from mlcore.scoring import softmax_with_temperature
    from training.audit import run_audit
    from training.cache import load_images
    from training.config import TrainConfig, cache_dir, data_dir
    from training.evaluate import evaluate_probs
    from training.subgroups import lesion_ids_of, subgroup_labels
    from training.train import calibrate_logits, class_weights_for, selection_score

    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(root / "classifier" / "shipped_model"))
    ap.add_argument("--offset", nargs="+", default=["own"],
                    metavar="own|none|prior|prior-known|val-crossfit|own+val-crossfit|DIR")
    ap.add_argument("--input-size", nargs="+", type=int, default=[], metavar="N",
                    help="default: the artifact's own input size")
    ap.add_argument("--tta", nargs="+", default=None, choices=list(TTA_MODES),
                    help="default: the artifact's own")
    ap.add_argument("--ensemble-with", nargs="*", default=[], metavar="DIR")
    ap.add_argument("--bootstrap", type=int, default=200)
    args = ap.parse_args()

    m = load_model(Path(args.model))
    others = [load_model(Path(d)) for d in args.ensemble_with]
    if any(o.card["split_ids"] != m.card["split_ids"] for o in others):
        raise SystemExit("--ensemble-with: every member must be trained on the same lesion split")
    cfg = TrainConfig.from_dict(m.card["training"]["config"])
    audit = run_audit(data_dir(), cache_dir())
    by_id = {r.isic_id: r for r in audit.records}
    recs = [by_id[i] for i in m.card["split_ids"]["val"]]
    masks = np.stack([mask_from_classes(r.allowed) for r in recs])
    contexts = contexts_of(recs)
    lesions = lesion_ids_of(recs, audit.groups)  # near-duplicates of one lesion are drawn together

    def adding(adjustment):
        """The variant that adds ``adjustment`` (a ClinicalAdjustment, or None) to the logits."""
        return lambda raw: raw if adjustment is None else adjustment.apply(raw, contexts)

    offsets = {}  # variant name -> validation logits from the network's raw ones
    for name in args.offset:
        if name == "none":
            offsets[name] = adding(None)
        elif name == "own":
            offsets[name] = adding(m.clinical)
        elif name in ("prior", "prior-known"):
            train = [by_id[i] for i in m.card["split_ids"]["train"]]
            train_contexts = contexts_of(train)
            if name == "prior-known":
                train, train_contexts = zip(*[(r, c) for r, c in zip(train, train_contexts) if c.known])
            m_train = np.stack([mask_from_classes(r.allowed) for r in train])
            offsets[name] = adding(prior_ratio(m_train, train_contexts, l2=cfg.clinical_l2,
                                               sample_weight=class_weights_for(m_train, cfg.class_weight_power)))
        elif name in CROSSFIT:
            base = adding(None if name == "val-crossfit" else m.clinical)
            offsets[name] = lambda raw, base=base: crossfit_offset(base(raw), masks, contexts, lesions, cfg)
        else:
            offsets[name] = adding(load_model(Path(name)).clinical)
    for size in args.input_size or [m.input_size]:
        nets = [at_size(member, cfg, size) for member in (m, *others)]
        images = load_images([r.path for r in recs], size, cache_dir(), framing=m.framing).astype(np.float32)
        for tta in args.tta or [m.tta]:
            raw = np.mean([predict_logits(net, images, batch_size=64, tta=tta) for net in nets], axis=0)
            for name, with_offset in offsets.items():
                logits = with_offset(raw)
                cfg.tta = tta
                cal = calibrate_logits(logits, masks, cfg)
                met = evaluate_probs(softmax_with_temperature(logits, cal["temperature"]), masks, cal["thresholds"],
                                     args.bootstrap, cfg.seed, groups=subgroup_labels(recs), lesions=lesions)
                figures = {"val_melanoma_auc": met["melanoma_auc"], "val_malignancy_auc": met["malignancy_auc"],
                           "val_balanced_accuracy_7": met["balanced_accuracy_7"]}
                print(json.dumps({
                    "model": "+".join(x.version for x in (m, *others)), "input_size": size, "tta": tta, "offset": name,
                    **{k: round(v, 4) for k, v in figures.items()},
                    "score": round(selection_score(figures), 4),
                    "archive_melanoma_auc": met["subgroups"]["source"].get(ARCHIVE, {}).get("melanoma_auc"),
                    "temperature": round(cal["temperature"], 4),
                    "recall_7": {c: round(v["recall"], 3) for c, v in met["per_code_7"].items()},
                }), flush=True)
    return 0


def crossfit_offset(logits, masks, contexts, lesions, cfg, folds: int = 5):
    """``logits`` plus a clinical offset fitted, for each of ``folds`` lesion-grouped folds, on the
    other folds (as training fits it: same L2, class weights of the same power)."""
    import numpy as np
    from sklearn.model_selection import GroupKFold

    from mlcore.clinical import fit_adjustment
    from training.train import class_weights_for

    out = np.zeros_like(logits)
    for fit, held in GroupKFold(n_splits=folds).split(logits, groups=lesions):
        # the class weights too come from the fitting folds alone: the held-out labels stay unseen
        adj = fit_adjustment(logits[fit], masks[fit], [contexts[i] for i in fit],
                             sample_weight=class_weights_for(masks[fit], cfg.class_weight_power), l2=cfg.clinical_l2)
        out[held] = adj.apply(logits[held], [contexts[i] for i in held])
    return out


def at_size(model, cfg, size: int):
    """The model's Keras network, rebuilt for a ``size`` x ``size`` input when that is not its own."""
    if size == model.input_size:
        return model.keras_model
    from dataclasses import replace

    net = replace(cfg, image_size=size).build_model()
    net.set_weights(model.keras_model.get_weights())
    return net


if __name__ == "__main__":
    sys.exit(main())
