"""Interactive uploads while every image is re-scored with a new model version.

    python bench/rescore_priority.py [--images 1000] [--singles 20] [--database-url URL]

Starts the real app (bench/harness.py: gunicorn, one inference worker on "inference,rescoring",
embedded Redis), uploads ``--images`` images and waits until they are scored, registers and
activates a second version (the bundled model under another version name) and re-scores all
images (the admin's "Re-score all images"), then, while that runs, makes ``--singles`` sequential
uploads and times each from upload to its score visible in status.json. Prints JSON: the
interactive upload-to-score p50/p95 during re-scoring (target p95 <= 2 s) and how much of the
re-scoring was still waiting when the last interactive image was scored (it must not have been
drained first for the figure to mean anything). Exits 1 if an interactive image was not scored.
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, App, Client, burst, lesion_image, percentile, wait_scored  # noqa: E402

TARGET_P95_S = 2.0

RESCORE = """
from cases.rescoring import start_rescore
from classifier.registry import activate, register_artifact
version = activate(register_artifact({path!r}))
job = start_rescore()
print("JOB", job.pk, version.version)
"""
PENDING = """
from cases.models import Prediction
from classifier.models import ModelVersion
v = ModelVersion.objects.get(version={version!r})
print("LEFT", Prediction.objects.filter(model_version=v).exclude(status="done").count(),
      Prediction.objects.filter(model_version=v).count())
"""


def second_version(dir_: Path) -> Path:
    """The bundled model under another version name (same weights: the queue is what is measured)."""
    src = ROOT / "classifier" / "shipped_model"
    out = dir_ / "rescore-bench-model"
    shutil.copytree(src, out)
    card = json.loads((out / "model_card.json").read_text())
    card["version"] = f"{card['version']}-rescore-bench"
    (out / "model_card.json").write_text(json.dumps(card, indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--singles", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    app = App(inference_workers=1, database_url=args.database_url)
    report: dict = {"images": args.images, "singles": args.singles, "target_p95_s": TARGET_P95_S}
    scratch = Path(tempfile.mkdtemp(prefix="rescore-bench-"))
    try:
        app.start()
        client = Client(app.base_url, "clinician", app.passwords["clinician"])
        seeded = burst(app, uploads=args.images, clients=args.clients, tag="base", seed_base=500_000)
        report["initial_scoring_s"] = seeded["all_scored_s"]
        out = app.manage("shell", "-c", RESCORE.format(path=str(second_version(scratch))))
        job_id, version = out.split("JOB", 1)[1].split()[:2]
        started = time.monotonic()
        case_id, lesion_id = client.new_lesion("INTERACTIVE-1")
        token = client.token(f"/lesions/{lesion_id}/")
        latencies = []
        for k in range(args.singles):
            begin = time.monotonic()
            if client.upload(lesion_id, f"live-{k}.jpg", lesion_image(900_000 + k), token=token).status_code != 302:
                raise RuntimeError("interactive upload rejected")
            latencies.append(wait_scored(client, case_id, k + 1, timeout=120, interval=0.02) - begin)
        left, total = app.manage("shell", "-c", PENDING.format(version=version)).split("LEFT", 1)[1].split()
        report["during_rescoring"] = {
            "rescore_job": int(job_id), "new_version": version,
            "interactive_upload_to_score_p50_s": round(percentile(latencies, 50), 3),
            "interactive_upload_to_score_p95_s": round(percentile(latencies, 95), 3),
            "interactive_upload_to_score_max_s": round(max(latencies), 3),
            "rescore_predictions_not_done_when_last_interactive_scored": int(left),
            "rescore_predictions_total": int(total),
            "seconds_since_rescore_started": round(time.monotonic() - started, 1),
        }
        p95 = report["during_rescoring"]["interactive_upload_to_score_p95_s"]
        report["target_met"] = p95 <= TARGET_P95_S and int(left) > 0
        print(json.dumps(report, indent=1))
        return 0
    finally:
        app.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
