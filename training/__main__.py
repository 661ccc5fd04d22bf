"""CLI: python -m training audit|train|evaluate|ensemble|assess|recalibrate|benchmark|pack|fit-pack|finish ..."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from mlcore.keras_model import TTA_MODES


def _common(ap):
    from .config import cache_dir, data_dir

    ap.add_argument("--data", type=Path, default=None, help=f"data root (default env SECONDLOOK_DATA_DIR or {data_dir()})")
    ap.add_argument("--cache", type=Path, default=None, help=f"cache dir (default env SECONDLOOK_CACHE_DIR or {cache_dir()})")


def _overrides(ap, sets: list[str], config_file: Path | None = None) -> dict:
    """TrainConfig fields from a JSON file and ``--set KEY=VALUE`` options (values parsed as JSON
    where they parse); an unknown key is a usage error."""
    from .config import TrainConfig

    known = TrainConfig().to_dict()
    d = json.loads(config_file.read_text()) if config_file else {}
    for kv in sets:
        k, sep, v = kv.partition("=")
        if not sep or k not in known:
            ap.error(f"unknown config key {k}" if sep else f"--set takes KEY=VALUE, not {kv!r}")
        try:
            d[k] = json.loads(v)
        except ValueError:
            d[k] = v
    return d


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .config import TrainConfig, cache_dir, data_dir

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("training.data").setLevel(logging.WARNING)
    ap = argparse.ArgumentParser(prog="python -m training")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("audit", help="audit the data, write audit.json + audit.md")
    _common(a)
    a.add_argument("--out", type=Path, default=Path("var/audit"))
    t = sub.add_parser("train", help="audit, split, train, calibrate, evaluate, export an artifact")
    _common(t)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--version", default=None)
    t.add_argument("--config", type=Path, default=None, help="JSON file with TrainConfig overrides")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig field, e.g. --set epochs=3 (repeatable)")
    t.add_argument("--fine-tune", type=Path, default=None, metavar="MODEL_DIR",
                   help="continue this artifact instead of training from ImageNet: its settings, then the "
                        "fine-tuning recipe (training.config.FINE_TUNE_RECIPE), then --config/--set, on its "
                        "lesion split (what the admin's 'Start from: the active model' runs)")
    t.add_argument("--restart", action="store_true",
                   help="with --fine-tune: v3.2's recipe instead (training.config.RESTART_RECIPE: every block, "
                        "a warm restart, that model's clinical offset inside the loss)")
    t.add_argument("--quiet", action="store_true", help="no per-batch progress bar")
    e = sub.add_parser("evaluate", help="re-evaluate an artifact on its recorded held-out split")
    _common(e)
    e.add_argument("--model", type=Path, default=None)
    e.add_argument("--split", default="test", choices=["test", "val", "train"])
    e.add_argument("--plots", type=Path, default=None, help="write plots to this dir")
    e.add_argument("--record-reference", action="store_true",
                   help="with --split val: record the melanoma-probability histogram in the artifact "
                        "(the admin's monitoring compares production scores with it)")
    e.add_argument("--add-subgroups", action="store_true",
                   help="write the per-subgroup test figures into the artifact's model card")
    r = sub.add_parser("recalibrate", help="re-fit temperature/thresholds on validation and re-evaluate "
                                           "an artifact on its recorded split (optionally with TTA)")
    _common(r)
    r.add_argument("--model", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--tta", choices=list(TTA_MODES), default=None)
    r.add_argument("--target-sensitivity", type=float, default=None)
    r.add_argument("--version", default=None)
    r.add_argument("--clinical-context", choices=["on", "off"], default=None,
                   help="fit (on) or drop (off) the age/sex/site logit offset; default: as configured")
    en = sub.add_parser("ensemble", help="combine models trained on the same split into one artifact "
                                         "(mean of their logits), training the missing members first")
    _common(en)
    en.add_argument("--out", type=Path, required=True)
    en.add_argument("--members", type=Path, nargs="*", default=[], metavar="DIR",
                    help="trained member artifacts (same lesion split)")
    en.add_argument("--seeds", type=int, nargs="*", default=[], metavar="SEED",
                    help="train one member per seed (default config + --set) into --members-dir, "
                         "on the split of the first seed (or --split-seed); existing members are reused")
    en.add_argument("--members-dir", type=Path, default=None, help="default: <out>.members")
    en.add_argument("--split-seed", type=int, default=None)
    en.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="TrainConfig override for the members trained here (repeatable)")
    en.add_argument("--version", default=None)
    en.add_argument("--tta", choices=list(TTA_MODES), default=None,
                    help="views the ensemble is served with (default: the first member's mode)")
    en.add_argument("--quiet", action="store_true", help="no per-batch progress bar")
    s = sub.add_parser("assess", help="fit the quality checks, out-of-domain detector and prediction sets "
                       "of an artifact on its own splits; measure them on test, PH2 and non-dermoscopic images")
    _common(s)
    s.add_argument("--model", type=Path, required=True)
    s.add_argument("--dry-run", action="store_true", help="print the figures, do not write the artifact")
    x = sub.add_parser("external", help="score an artifact on PH2 (external test set: reported, never tuned on); "
                                        "--record writes the figures into its model card and metrics")
    _common(x)
    x.add_argument("--model", type=Path, required=True)
    x.add_argument("--record", action="store_true")
    b = sub.add_parser("benchmark", help="the frozen benchmark: its version, size and whether it resolves against "
                                         "the data; --build-from writes a new version from a model's test split")
    _common(b)
    b.add_argument("--build-from", type=Path, default=None, metavar="MODEL_DIR")
    b.add_argument("--version", default=None, help="the new version's name (with --build-from)")
    b.add_argument("--out", type=Path, default=None, help="default training/benchmark/<version>.json")
    ib = sub.add_parser("import-backbone", help="rebuild the bundled ImageNet MobileNetV2 weights "
                        "(training/backbones/) from the nsfwjs npm tarball (npm pack nsfwjs@4.3.0)")
    _common(ib)
    ib.add_argument("--tarball", type=Path, required=True)
    pk = sub.add_parser("pack", help="write the training and validation images of a config's split, WebP-encoded, "
                                     "with their masks and weights: the input of fit-pack on an accelerator")
    _common(pk)
    pk.add_argument("--out", type=Path, required=True)
    pk.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    fp = sub.add_parser("fit-pack", help="train the network from a pack on this machine's Keras backend "
                                         "(KERAS_BACKEND=jax on an accelerator); writes NAME.weights.npz + "
                                         "NAME.history.json")
    _common(fp)
    fp.add_argument("--pack", type=Path, required=True)
    fp.add_argument("--out", type=Path, required=True)
    fp.add_argument("--name", required=True)
    fp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override the pack's config (not its split or image size)")
    fp.add_argument("--deadline", type=float, default=None, help="unix time by which training must end")
    fp.add_argument("--log", type=Path, default=None)
    fp.add_argument("--threads", type=int, default=12, help="augmentation threads")
    fi = sub.add_parser("finish", help="calibrate, evaluate, export and assess a network fit-pack trained")
    _common(fi)
    fi.add_argument("--weights", type=Path, required=True)
    fi.add_argument("--history", type=Path, required=True)
    fi.add_argument("--out", type=Path, required=True)
    fi.add_argument("--version", default=None)
    args = ap.parse_args(argv)
    droot = args.data or data_dir()
    cdir = args.cache or cache_dir()
    if args.cmd == "audit":
        from .audit import run_audit, write_report

        res = run_audit(droot, cdir)
        j, m = write_report(res.report, args.out)
        print(json.dumps(res.report["counts"], indent=1))
        print(f"wrote {j} and {m}")
        return 0
    if args.cmd == "train":
        if args.restart and not args.fine_tune:
            ap.error("--restart continues a trained model: give it with --fine-tune MODEL_DIR")
        if args.fine_tune:
            from .config import fine_tune_config, restart_config

            cfg = (restart_config if args.restart else fine_tune_config)(
                args.fine_tune, _overrides(ap, args.set, args.config))
        else:
            cfg = TrainConfig.from_dict({**TrainConfig().to_dict(), **_overrides(ap, args.set, args.config)})
        from .train import train

        train(cfg, droot, args.out, cdir, version=args.version, verbose=0 if args.quiet else 1)
        return 0
    if args.cmd == "evaluate":
        from .evaluate_artifact import evaluate_artifact

        model_dir = args.model
        if model_dir is None:
            from mlcore.model_store import default_model_dir

            model_dir = default_model_dir()
        res = evaluate_artifact(model_dir, droot, cdir, split=args.split, plots_dir=args.plots)
        print(json.dumps(res, indent=1))
        if args.record_reference:
            if args.split != "val":
                ap.error("--record-reference records the validation split's histogram (--split val)")
            from .artifact import add_test_figures
            from mlcore.scoring import SCORE_HISTOGRAM_KEY

            add_test_figures(model_dir, **{SCORE_HISTOGRAM_KEY: res[SCORE_HISTOGRAM_KEY]})
            print(f"recorded the validation histogram in {model_dir}")
        if args.add_subgroups:
            if args.split != "test":
                ap.error("--add-subgroups records held-out (test) figures only")
            from .artifact import add_test_figures

            add_test_figures(model_dir, subgroups=res["subgroups"])
            print(f"added subgroups to {model_dir}")
        return 0
    if args.cmd == "ensemble":
        from .ensemble import build_ensemble, train_members

        members = list(args.members)
        if args.seeds:
            members += train_members(args.seeds, args.members_dir or args.out.with_name(args.out.name + ".members"),
                                     droot, cdir, _overrides(ap, args.set), split_seed=args.split_seed,
                                     verbose=0 if args.quiet else 1)
        if len(members) < 2:
            ap.error("an ensemble needs at least two members (--members and/or --seeds)")
        print(json.dumps(build_ensemble(members, args.out, droot, cdir, version=args.version, tta=args.tta), indent=1))
        return 0
    if args.cmd == "assess":
        from .assessment import assess_artifact

        print(json.dumps(assess_artifact(args.model, droot, cdir, write=not args.dry_run), indent=1))
        return 0
    if args.cmd == "external":
        from .artifact import add_test_figures
        from .evaluate_artifact import evaluate_external

        res = evaluate_external(args.model, droot)
        print(json.dumps(res, indent=1))
        if args.record:
            add_test_figures(args.model, external={"ph2": res})
            print(f"recorded the PH2 figures in {args.model}")
        return 0
    if args.cmd == "import-backbone":
        from .backbone import import_nsfwjs

        print(json.dumps(import_nsfwjs(args.tarball), indent=1))
        return 0
    if args.cmd == "benchmark":
        from .benchmark import BENCHMARK_DIR, build_from_model, current_benchmark
        from .benchmark.scoring import benchmark_images

        if args.build_from is not None:
            if not args.version:
                ap.error("--build-from needs --version (e.g. frozen-v2)")
            bench = build_from_model(args.build_from, droot, cdir, args.out or BENCHMARK_DIR / f"{args.version}.json",
                                     args.version)
        else:
            bench = current_benchmark()
        images = benchmark_images(droot, cdir, bench)
        print(json.dumps({**bench.summary(), "file": bench.path, "created_from": bench.created_from,
                          "resolved_images": len(images.image_ids)}, indent=1))
        return 0
    if args.cmd == "pack":
        from .accelerated import write_pack

        cfg = TrainConfig.from_dict({**TrainConfig().to_dict(), **_overrides(ap, args.set)})
        print(json.dumps(write_pack(cfg, droot, cdir, args.out), indent=1))
        return 0
    if args.cmd == "fit-pack":
        from .accelerated import PACK_FIXED, fit_pack, read_pack

        pack = read_pack(args.pack)
        sets = _overrides(ap, args.set)
        if PACK_FIXED & set(sets):
            ap.error(f"the pack fixes {', '.join(sorted(PACK_FIXED & set(sets)))}")
        cfg = TrainConfig.from_dict({**pack["config"], **sets})
        fit_pack(pack, cfg, args.out, args.name, deadline=args.deadline, log_file=args.log, threads=args.threads)
        return 0
    if args.cmd == "finish":
        from .accelerated import finish

        print(finish(args.weights, args.history, droot, args.out, cdir, version=args.version))
        return 0
    if args.cmd == "recalibrate":
        from .recalibrate import recalibrate

        res = recalibrate(args.model, args.out, droot, cdir, tta=args.tta,
                          target_sensitivity=args.target_sensitivity, version=args.version,
                          clinical_context=None if args.clinical_context is None else args.clinical_context == "on")
        print(json.dumps(res, indent=1))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
