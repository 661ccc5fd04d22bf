"""Versioned model artifact: model.keras + model_card.{json,md} + metrics.json + audit.json + plots/."""
from __future__ import annotations

import datetime as _dt
import json
import subprocess
from pathlib import Path

import numpy as np

from .config import REPO_ROOT, TrainConfig
from mlcore.artifact import MODEL_FILE, json_safe, read_card, sha256_file, write_card
from mlcore.imageio import RESIZE_METHOD
from mlcore.labels import CLASSES, HAM_TO_CLASSES, MALIGNANT_CLASSES
from mlcore.scoring import Thresholds

CARD_FORMAT = 1


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        rev = out.stdout.strip()
        if out.returncode != 0 or not rev:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except Exception:
        return None


def card_markdown(card: dict) -> str:
    m = card.get("metrics", {})
    v = card.get("validation", {})
    f = lambda x: "n/a" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))
    ci = lambda c: f"[{f(c[0])}, {f(c[1])}]" if c else ""
    op = m.get("operating_points", {})
    lines = [
        f"# SecondLook model {card['version']}", "",
        f"Created {card['created']}; code revision `{card.get('code_revision')}`; "
        f"model sha256 `{card['model_sha256']}`.", "",
        "**Not a medical device. Second opinion for dermatologists only.**", "",
        "## Input", "",
        f"- {card['input_size']}x{card['input_size']} RGB, uint8 0..255 fed as float32; "
        f"{card['preprocessing']['resize']}; EXIF orientation applied; any mode converted to RGB "
        "(alpha composited on white, 16-bit scaled).",
        "- Framing (`mlcore.framing`): " + ("a square crop centred on the lesion (1.5x its bounding box), "
                                            "then the resize" if card.get("framing") == "lesion"
                                            else "the whole frame, squashed to the square") + ".",
        f"- Classes (softmax order): {', '.join(card['classes'])}.",
        f"- Temperature {card['temperature']:.4f}. Melanoma probability = P(melanoma); malignancy score = "
        f"P({') + P('.join(sorted(MALIGNANT_CLASSES))}).",
        f"- Thresholds (validation, target sensitivity {f(v.get('target_sensitivity'))}): melanoma "
        f"{card['thresholds']['melanoma']:.4f}, malignancy {card['thresholds']['malignancy']:.4f}. "
        "Flagged when either is reached.",
        f"- Test-time augmentation: {card.get('tta', 'none')}.",
        "- Clinical context: " + ("age, sex and anatomic site add a per-class offset to the logits "
                                  "(fitted on the training split); without them the image alone decides."
                                  if card.get("clinical_context") else "not used; the image alone decides."), "",
        "## Held-out test metrics", "",
        f"- images: {m.get('n_images')} (melanoma {m.get('n_melanoma')}, malignant {m.get('n_malignant')}); "
        f"95 % CIs resample {m.get('ci_resampling', 'images')}"
        + (f" ({m['n_lesions']} lesions)" if m.get("n_lesions") else ""),
        f"- melanoma AUC {f(m.get('melanoma_auc'))} {ci(m.get('melanoma_auc_ci95'))}",
        f"- malignancy AUC {f(m.get('malignancy_auc'))} {ci(m.get('malignancy_auc_ci95'))}",
        f"- balanced accuracy, 7 HAM codes {f(m.get('balanced_accuracy_7'))} {ci(m.get('balanced_accuracy_7_ci95'))}",
        f"- balanced accuracy, 9 classes (single-label images) {f(m.get('balanced_accuracy_9'))} "
        f"{ci(m.get('balanced_accuracy_9_ci95'))}",
        f"- ECE (top label) {f(m.get('ece_top_label'))}",
    ]
    for k in ("melanoma", "malignancy"):
        if k in op:
            o = op[k]
            lines.append(f"- at the {k} threshold: sensitivity {f(o['sensitivity'])} {ci(o['sensitivity_ci95'])}, "
                         f"specificity {f(o['specificity'])} {ci(o['specificity_ci95'])}")
    lines += _subgroup_lines(m.get("subgroups") or {}, f)
    unit = v.get("bootstrap_unit", "image")
    lines += ["", "## Validation operating points", "",
              f"In-sample: the thresholds were chosen on these validation images (95 % CIs resample {unit}s).", ""]
    for k in ("melanoma", "malignancy"):
        if k in v:
            o = v[k]
            lines.append(f"- {k}: threshold {o['threshold']:.4f}, sensitivity {f(o['sensitivity'])} "
                         f"{ci(o['sensitivity_ci95'])}, specificity {f(o['specificity'])} {ci(o['specificity_ci95'])}")
    lines += _assessment_lines(card.get("assessment"), f)
    a = card.get("audit_counts", {})
    lines += ["", "## Data", "",
              f"- data fingerprint `{card.get('data_fingerprint')}`",
              "- split sizes: " + ", ".join(f"{k} {len(x)}" for k, x in card.get("split_ids", {}).items()),
              f"- audit: clean images {a.get('clean_images')}, dropped conflicting {a.get('dropped_conflicting')}, "
              f"resolution {a.get('resolution')}"]
    lines += _benchmark_lines(card.get("benchmark"))
    lines += [""]
    lines += _ensemble_lines(card["ensemble"], f) if card.get("ensemble") else _training_lines(card["training"], f)
    lines.append("")
    return "\n".join(lines)


def save_card(model_dir: Path, card: dict) -> None:
    """Write an artifact's card in both forms: ``model_card.json`` and its ``model_card.md``
    rendering, so the two never disagree."""
    write_card(model_dir, card)
    (Path(model_dir) / "model_card.md").write_text(card_markdown(card))


def _assessment_lines(assessment: dict | None, f) -> list[str]:
    """When the model declines to answer: its fitted checks and how often they fired."""
    if not assessment:
        return ["", "## When the model cannot judge an image", "",
                "- no quality checks or out-of-domain detector were fitted for this artifact"]
    q, o, c = assessment["quality"], assessment.get("ood") or {}, assessment["conformal"]
    lines = ["", "## When the model cannot judge an image", "",
             f"- image-quality checks (training split, {q['images']} images, {f(q['pass_rate'])} pass): "
             + ", ".join(f"{k} {v:.3g}" for k, v in q["thresholds"].items()),
             f"- out-of-domain threshold {f(o.get('threshold'))} (validation pass rate "
             f"{f(o.get('validation_pass_rate'))}; {o.get('method', 'none')})" if o else
             "- no out-of-domain detector (the model has no feature layer for it)",
             f"- conformal prediction sets: probability floor {f(c['probability_floor'])} for "
             f"{f(c['coverage_target'])} coverage on validation",
             f"- clinical photos: {assessment.get('clinical_photos', '')}"]
    for name, r in (assessment.get("measured") or {}).items():
        if "images" not in r:
            lines.append(f"- {name}: {r.get('error', 'not measured')}")
            continue
        cov = r.get("conformal") or {}
        lines.append(f"- {name} ({r['images']} images): quality failed {f(r['quality_failed_rate'])}, unfamiliar "
                     f"{f(r['unfamiliar_rate'])}, could not assess {f(r['not_assessable_rate'])}"
                     + (f"; prediction-set coverage {f(cov.get('coverage'))}, mean size {f(cov.get('mean_set_size'))}"
                        if cov else ""))
    return lines


def _benchmark_lines(benchmark: dict | None) -> list[str]:
    """Which frozen benchmark the run kept out of training and validation."""
    if not benchmark:
        return []
    return [f"- frozen benchmark `{benchmark['version']}` (sha256 `{str(benchmark.get('content_sha256'))[:12]}`, "
            f"{benchmark.get('lesions')} lesions): kept out of {' and '.join(benchmark.get('kept_out_of', []))}; "
            f"{benchmark.get('images_in_test')} of its images are in this run's test split"]


def _budget_minutes(history: dict) -> dict | None:
    if "run_budget_s" not in history:
        return None
    return {"run": history["run_budget_s"] / 60.0, "loop": (history.get("loop_budget_s") or 0) / 60.0,
            "finishing_estimate": (history.get("finish_estimate_s") or 0) / 60.0}


def record_total_minutes(model_dir: Path, seconds: float) -> None:
    """Set the card's ``training.total_minutes`` to the run's final wall-clock time (the
    assessment runs after the export)."""
    card = read_card(model_dir, required=())
    card["training"]["total_minutes"] = seconds / 60.0
    save_card(model_dir, card)


def _training_lines(training: dict, f) -> list[str]:
    return ["## Training", "",
            f"- seed {training.get('config', {}).get('seed')}, best epoch {training.get('best_epoch')}, "
            f"train time {f(training.get('train_minutes'))} min, precision {training.get('precision_policy')}, "
            f"on {training.get('accelerator', 'cpu')} ({training.get('backend', 'tensorflow')}), "
            f"{f(training.get('total_minutes'))} min in all" + _budget_text(training.get("budget_minutes"), f),
            f"- config: `{json.dumps(training.get('config'))}`"] + _tta_choice_lines(training.get("tta_choice"), f) \
        + _warm_start_lines(training.get("warm_start")) + _distilled_lines(training.get("distilled_from")) \
        + _offset_in_loss_lines(training.get("offset_in_loss"))


def _tta_choice_lines(choice: dict | None, f) -> list[str]:
    if not choice or "validation_scores" not in choice:
        return []
    scores = choice["validation_scores"]
    return [f"- test-time augmentation chosen on validation: {choice['chosen']} (selection score "
            f"none {f(scores['none'])}, flip2 {f(scores['flip2'])})"]


def _budget_text(budget: dict | None, f) -> str:
    if not budget:
        return ""
    return (f" (run budget {f(budget['run'])} min: {f(budget['loop'])} min for the loop, "
            f"{f(budget['finishing_estimate'])} min set aside for the finishing)")


def _warm_start_lines(warm_start: dict | None) -> list[str]:
    if not warm_start:
        return []
    kept = ", on its lesion split" if warm_start.get("keeps_split") else ""
    return [f"- warm-started from `{warm_start.get('version') or warm_start.get('file')}` "
            f"(sha256 {str(warm_start.get('sha256'))[:12]}…){kept}"]


def _offset_in_loss_lines(offset: dict | None) -> list[str]:
    if not offset:
        return []
    return [f"- trained with the clinical offset of `{offset.get('version')}` added to its logits in the loss "
            f"({offset.get('images_with_context')} training images with context)"]


def _distilled_lines(teacher: dict | None) -> list[str]:
    if not teacher:
        return []
    return [f"- distilled from `{teacher.get('version')}` (sha256 {str(teacher.get('sha256'))[:12]}…, "
            f"{teacher.get('tta')} views, weight {teacher.get('weight')})"]


def _ensemble_lines(ensemble: dict, f) -> list[str]:
    """The Training section of an ensemble's card: one line per member."""
    lines = ["## Training (ensemble)", "",
             f"- {len(ensemble['members'])} CNNs trained on the same lesion split; "
             f"{ensemble.get('combine')}; weights stored as {ensemble.get('weights_storage')}.",
             "- each member's test figures are those of its own artifact (with its own clinical offset "
             "where it had one); the ensemble refits the offset, temperature and thresholds."]
    for i, m in enumerate(ensemble["members"]):
        cfg = m.get("config") or {}
        alone = m.get("test_alone") or {}
        lines.append(
            f"- member {i}: `{m.get('version')}`, seed {cfg.get('seed')}, best epoch {m.get('best_epoch')} of "
            f"{m.get('epochs_run')}, train time {f(m.get('train_minutes'))} min, precision "
            f"{m.get('precision_policy')}; test alone: melanoma AUC {f(alone.get('melanoma_auc'))}, "
            f"malignancy AUC {f(alone.get('malignancy_auc'))}, bal. acc (7) {f(alone.get('balanced_accuracy_7'))}")
    for i, m in enumerate(ensemble["members"]):
        lines.append(f"- member {i} config: `{json.dumps(m.get('config'))}`")
    return lines


def _subgroup_lines(subgroups: dict, f) -> list[str]:
    """Markdown table of the held-out figures per subgroup (groups with a melanoma AUC only)."""
    rows = [(att, value, r) for att, values in subgroups.items() for value, r in values.items()
            if r.get("melanoma_auc") is not None]
    if not rows:
        return []
    lines = ["", "## Held-out test by subgroup", "",
             "| attribute | value | images | melanomas | melanoma AUC | sensitivity / specificity | malignancy AUC |",
             "|---|---|---|---|---|---|---|"]
    for att, value, r in rows:
        lines.append(f"| {att} | {value} | {r['n']} | {r['n_melanoma_positive']} | {f(r['melanoma_auc'])} | "
                     f"{f(r['melanoma_sensitivity'])} / {f(r['melanoma_specificity'])} | {f(r['malignancy_auc'])} |")
    return lines


def export_artifact(model, out_dir: Path, *, cfg: TrainConfig, temperature: float, thresholds: Thresholds,
                    validation: dict, metrics: dict, history: dict, audit_report: dict,
                    split: dict[str, list[str]], test_probs=None, test_masks=None,
                    version: str | None = None, plots: bool = True,
                    data_sources: list[str] | None = None, clinical=None, ensemble: dict | None = None,
                    benchmark: dict | None = None) -> Path:
    """Write the artifact. ``ensemble`` (training.ensemble: the members' summaries) marks a
    model that averages several CNNs; its weights are stored as float16. ``benchmark`` (the
    frozen benchmark's summary, training.benchmark) records which benchmark version was kept out
    of training and validation."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / MODEL_FILE
    tmp = out_dir / "model.tmp.keras"
    if ensemble:
        from .ensemble import save_half

        save_half(model, tmp)
    else:
        model.save(tmp)
    tmp.replace(model_path)
    sha = sha256_file(model_path)
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    version = version or f"cnn{cfg.image_size}-{_dt.datetime.now(_dt.timezone.utc):%Y%m%d-%H%M}-{sha[:8]}"
    card = {
        "format": CARD_FORMAT,
        "name": "SecondLook dermoscopy CNN" + (" ensemble" if ensemble else ""),
        "version": version,
        "created": created,
        "classes": list(CLASSES),
        "ham_codes": {k: sorted(v) for k, v in HAM_TO_CLASSES.items()},
        "malignant_classes": sorted(MALIGNANT_CLASSES),
        "input_size": int(cfg.image_size),
        # mlcore.framing: how the image is framed before the resize (inference reads this field)
        "framing": cfg.framing,
        "preprocessing": {"color": "RGB", "dtype": "uint8 0..255 as float32 (scaling inside the model)",
                          "framing": cfg.framing, "resize": RESIZE_METHOD, "exif_transpose": True},
        "output": "logits (float32); probabilities = softmax((logits + clinical offset) / temperature)",
        # mlcore.clinical.ClinicalAdjustment: per-class logit offset from age, sex and site
        "clinical_context": clinical.to_dict() if clinical is not None else None,
        "last_conv_layer": cfg.last_conv_layer,
        "tta": cfg.tta,
        "temperature": float(temperature),
        "thresholds": thresholds.to_dict(),
        "validation": validation,
        "metrics": {k: metrics.get(k) for k in (
            "n_images", "n_melanoma", "n_malignant", "melanoma_auc", "melanoma_auc_ci95", "malignancy_auc",
            "malignancy_auc_ci95", "balanced_accuracy_7", "balanced_accuracy_7_ci95", "balanced_accuracy_9",
            "balanced_accuracy_9_ci95", "ece_top_label", "operating_points", "flag_rate", "subgroups",
            "ci_resampling", "n_lesions")},
        "audit_counts": audit_report.get("counts", {}),
        "data_fingerprint": audit_report.get("data_fingerprint"),
        "data_sources": data_sources or [],
        "training": {"config": cfg.to_dict(), "seed": cfg.seed,
                     "best_epoch": history.get("best_epoch"),
                     "weight_average": history.get("weight_average"),
                     "epochs_run": len(history.get("loss", [])),
                     "train_minutes": (history.get("train_seconds") or 0) / 60.0,
                     "total_minutes": (history.get("total_seconds") or 0) / 60.0,
                     "precision_policy": history.get("precision_policy"),
                     # where the loop ran: "cpu" (training.train) or the accelerator that ran
                     # training.accelerated.fit_pack, with its Keras backend
                     "accelerator": history.get("accelerator", "cpu"),
                     "backend": history.get("backend", "tensorflow"),
                     # the artifact a warm-started run began from (cfg.pretrained), by version and sha256
                     "warm_start": history.get("warm_start"),
                     # the teacher a distilled run learnt from (cfg.distill_from): version, sha256, views
                     "distilled_from": history.get("distilled_from"),
                     # the artifact whose clinical offset was added to the logits in the loss
                     "offset_in_loss": history.get("offset_in_loss"),
                     # the whole run's budget, what it left the loop, and the finishing it set aside
                     "budget_minutes": _budget_minutes(history),
                     # tta "auto": the validation scores that chose the served mode (card["tta"])
                     "tta_choice": history.get("tta_choice")},
        "code_revision": git_revision(),
        "model_file": MODEL_FILE,
        "model_sha256": sha,
        "split_ids": split,
        "benchmark": benchmark,
    }
    if cfg.backbone != "scratch":
        from .backbone import describe

        card["training"]["backbone"] = describe()
    if ensemble:
        members = ensemble.get("members", [])
        card["ensemble"] = ensemble
        card["training"].update({
            "best_epoch": None, "epochs_run": None,
            "train_minutes": sum(m.get("train_minutes") or 0 for m in members),
            "total_minutes": sum(m.get("total_minutes") or 0 for m in members),
            "precision_policy": members[0].get("precision_policy") if members else None})
    card = json_safe(card)
    (out_dir / "metrics.json").write_text(json.dumps(json_safe(dict(metrics, history=history)), indent=1))
    (out_dir / "audit.json").write_text(json.dumps(json_safe(audit_report), indent=1))
    if plots and test_probs is not None:
        from .evaluate import plot_all

        plot_all(np.asarray(test_probs), np.asarray(test_masks), metrics, history, out_dir / "plots")
    save_card(out_dir, card)
    return out_dir


def add_test_figures(model_dir: Path, **figures) -> dict:
    """Add held-out figures computed after export (e.g. ``subgroups``) to an artifact's metrics:
    model_card.json, model_card.md and metrics.json. The model file and everything else stay."""
    model_dir = Path(model_dir)
    card = read_card(model_dir, required=())
    figures = json_safe(figures)
    card["metrics"] = dict(card.get("metrics", {}), **figures)
    metrics_file = model_dir / "metrics.json"
    if metrics_file.is_file():
        metrics_file.write_text(json.dumps(json_safe(dict(json.loads(metrics_file.read_text()), **figures)), indent=1))
    save_card(model_dir, card)
    return card

