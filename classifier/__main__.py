"""CLI: python -m classifier predict [--model DIR] [--csv OUT] [--age N --sex S --site S] PATH..."""
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


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ap = argparse.ArgumentParser(prog="python -m classifier")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("predict", help="predict image files / folders, write CSV")
    p.add_argument("--model", type=Path, default=None, help="model dir (default env SECONDLOOK_MODEL_DIR or shipped)")
    p.add_argument("--csv", type=Path, default=None, help="write CSV here (default stdout)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--age", type=float, default=None, help="patient's age in years (applies to every image)")
    p.add_argument("--sex", choices=["male", "female", "other", "unknown"], default=None)
    p.add_argument("--site", default=None, help="anatomic site, e.g. 'posterior torso', 'head/neck', 'back'")
    p.add_argument("paths", nargs="+")
    args = ap.parse_args(argv)
    from mlcore.clinical import ClinicalContext, ClinicalContextError

    try:
        context = ClinicalContext(age=args.age, sex=args.sex, site=args.site)
    except ClinicalContextError as exc:
        ap.error(str(exc))

    from tqdm import tqdm

    from mlcore import options
    from mlcore.inference import predict_images
    from mlcore.model_store import ModelLoadError, load_model
    from mlcore.preprocess import ImageDecodeError, decode_image

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
                    imgs.append(decode_image(f.read_bytes()))
                    names.append(f.stem)
                except (ImageDecodeError, OSError) as exc:
                    errors += 1
                    print(f"error: {f}: {exc}", file=sys.stderr)
            for name, pred in zip(names, predict_images(model, imgs, batch_size=args.batch_size,
                                                                contexts=[context] * len(imgs))):
                w.writerow(prediction_row(name, pred))
    finally:
        if args.csv:
            fh.close()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
