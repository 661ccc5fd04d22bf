"""CLI (no Django):

    python -m classifier predict [--model DIR] [--csv OUT] [--age N --sex S --site S] PATH...
    python -m classifier gate --candidate DIR [--active DIR] [--bootstrap N] [--plot PNG] [--json OUT]

``gate`` prints the promotion gate's paired comparison on the frozen benchmark (and PH2,
reported) as the admin stores it, so its figures can be reproduced from the command line.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from mlcore.labels import CLASSES

# New columns go at the end: scripts read the older ones by position.
CSV_COLUMNS = ["image", *CLASSES, "melanoma_probability", "malignancy_score", "flagged", "model_version",
               "assessable", "assessment_note"]
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}


def collect_paths(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS))
        else:
            out.append(p)
    return out


def prediction_row(name: str, pred) -> list:
    return [name, *[f"{pred.class_probabilities[c]:.6f}" for c in CLASSES], f"{pred.melanoma_probability:.6f}",
            f"{pred.malignancy_score:.6f}", int(pred.flagged), pred.model_version, int(pred.assessable),
            pred.assessment_note]


def _fmt(v, signed: bool = False) -> str:
    if v is None:
        return "—"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def _ci(row: dict) -> str:
    return "—" if row.get("ci_low") is None else f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"


def _verdict(row: dict) -> str:
    return ("pass" if row["passed"] else "FAIL") if row.get("gated") else "reported"


def gate_table(result) -> str:
    """The gate's tables as plain text (what the admin's version page shows)."""
    b = result.benchmark
    active = (result.active or {}).get("version") or "(none)"
    lines = [f"frozen benchmark {b.get('version')} (sha256 {str(b.get('content_sha256'))[:12]}): {b.get('images')} "
             f"images, {b.get('lesions')} lesions ({b.get('resampling_groups')} resampling groups), "
             f"{b.get('melanomas')} melanoma images",
             f"candidate {result.candidate.get('version')}  vs  active {active}; difference = candidate - active; "
             f"95 % CI from {result.bootstrap.get('resamples')} lesion-level resamples (seed {result.bootstrap.get('seed')})",
             "", f"{'metric':44s} {'candidate':>9s} {'active':>9s} {'diff':>8s} {'95 % CI of diff':>18s}  {'rule':24s} result"]
    for r in result.rows:
        lines.append(f"{r['metric']:44s} {_fmt(r['candidate']):>9s} {_fmt(r['active']):>9s} "
                     f"{_fmt(r['difference'], True):>8s} {_ci(r):>18s}  {r.get('rule', ''):24s} {_verdict(r)}")
    if result.subgroups:
        lines += ["", f"{'melanoma AUC by subgroup':30s} {'images':>6s} {'mel.les':>7s} {'candidate':>9s} {'active':>9s} "
                      f"{'diff':>8s} {'95 % CI of diff':>18s}  result"]
        for r in result.subgroups:
            lines.append(f"{r['attribute'] + ' ' + r['value']:30s} {r['images']:>6d} {r['melanoma_lesions']:>7d} "
                         f"{_fmt(r['candidate']):>9s} {_fmt(r['active']):>9s} {_fmt(r['difference'], True):>8s} "
                         f"{_ci(r):>18s}  {_verdict(r)}")
    if result.external:
        lines += ["", f"{'PH2 (external, reported only)':44s} {'candidate':>9s} {'active':>9s} {'diff':>8s} {'95 % CI of diff':>18s}"]
        for r in result.external:
            lines.append(f"{r['metric']:44s} {_fmt(r['candidate']):>9s} {_fmt(r['active']):>9s} "
                         f"{_fmt(r['difference'], True):>8s} {_ci(r):>18s}")
    lines += ["", *[f"- {reason}" for reason in result.reasons], "",
              f"gate: {'PASSES' if result.allowed else 'REFUSES'} {result.candidate.get('version')}"]
    return "\n".join(lines)


def gate_command(args) -> int:
    import json
    import time

    from classifier.promotion import compare_artifacts
    from mlcore import options
    from training.benchmark import BenchmarkLeakError
    from training.config import cache_dir, data_dir

    options.configure(options.from_environ(os.environ))
    t0 = time.perf_counter()
    try:
        result = compare_artifacts(args.candidate, args.active, args.data or data_dir(), args.cache or cache_dir(),
                                   external=not args.no_external, target_sensitivity=args.target_sensitivity,
                                   n_resamples=args.bootstrap, seed=args.seed, plot_to=args.plot)
    except BenchmarkLeakError as exc:  # a model that saw (or may have seen) the benchmark is not compared on it
        print(f"not compared: {exc}", file=sys.stderr)
        return 2
    print(gate_table(result))
    print(f"({time.perf_counter() - t0:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=1))
    return 0 if result.allowed else 1


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ap = argparse.ArgumentParser(prog="python -m classifier")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gate", help="the promotion gate: paired comparison of two artifacts on the frozen benchmark")
    g.add_argument("--candidate", type=Path, required=True, help="candidate model dir")
    g.add_argument("--active", type=Path, default=None, help="active model dir (none: the first-model rules)")
    g.add_argument("--data", type=Path, default=None, help="data root (default env SECONDLOOK_DATA_DIR)")
    g.add_argument("--cache", type=Path, default=None, help="cache dir (default env SECONDLOOK_CACHE_DIR)")
    g.add_argument("--bootstrap", type=int, default=1000, help="lesion-level resamples (default 1000)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--target-sensitivity", type=float, default=0.90, help="first-model rule only")
    g.add_argument("--no-external", action="store_true", help="do not score PH2")
    g.add_argument("--plot", type=Path, default=None, help="write the paired melanoma ROC (PNG) here")
    g.add_argument("--json", type=Path, default=None, help="write the stored form of the result here")
    p = sub.add_parser("predict", help="predict image files / folders, write CSV")
    p.add_argument("--model", type=Path, default=None, help="model dir (default env SECONDLOOK_MODEL_DIR or shipped)")
    p.add_argument("--csv", type=Path, default=None, help="write CSV here (default stdout)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--age", type=float, default=None, help="patient's age in years (applies to every image)")
    p.add_argument("--sex", choices=["male", "female", "other", "unknown"], default=None)
    p.add_argument("--site", default=None, help="anatomic site, e.g. 'posterior torso', 'head/neck', 'back'")
    p.add_argument("paths", nargs="+")
    args = ap.parse_args(argv)
    if args.cmd == "gate":
        return gate_command(args)
    from mlcore.clinical import ClinicalContext, ClinicalContextError

    try:
        context = ClinicalContext(age=args.age, sex=args.sex, site=args.site)
    except ClinicalContextError as exc:
        ap.error(str(exc))

    from tqdm import tqdm

    from mlcore import options
    from mlcore.inference import NonFiniteOutputError, decode_for, predict_images
    from mlcore.model_store import ModelLoadError, load_model
    from mlcore.preprocess import ImageDecodeError

    try:
        # this command's settings: the same variables the web app's settings read
        opts = options.configure(options.from_environ(os.environ))
        model = load_model(args.model or opts.model_dir)
    except (ModelLoadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    files = collect_paths(args.paths)
    fh = args.csv.open("w", newline="") if args.csv else sys.stdout
    w = csv.writer(fh)
    w.writerow(CSV_COLUMNS)
    errors = 0
    try:
        for i in tqdm(range(0, len(files), args.batch_size), desc="predicting", unit="batch",
                      disable=not files or args.csv is None and not sys.stderr.isatty()):
            chunk = files[i:i + args.batch_size]
            imgs, names = [], []
            for f in chunk:
                try:
                    imgs.append(decode_for(model, f.read_bytes()))
                    names.append(f.stem)
                except (ImageDecodeError, OSError) as exc:
                    errors += 1
                    print(f"error: {f}: {exc}", file=sys.stderr)
            try:
                preds = predict_images(model, imgs, batch_size=args.batch_size, contexts=[context] * len(imgs))
            except NonFiniteOutputError as exc:  # those images fail in words; their batch mates are written
                preds = exc.results
                for index, reason in exc.reasons.items():
                    errors += 1
                    print(f"error: {names[index]}: {reason}", file=sys.stderr)
            for name, pred in zip(names, preds):
                if pred is not None:
                    w.writerow(prediction_row(name, pred))
    finally:
        if args.csv:
            fh.close()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
