"""Serving pipeline figures on the real app: cold start, worker memory, warm single-upload latency,
and a burst of uploads with ONE and then TWO inference workers.

    python bench/pipeline.py [--burst 200] [--clients 8] [--singles 20] [--database-url URL]
                             [--model-dir DIR] [--max-workers 2]

Everything goes through HTTP like a browser (login, forms, upload, the case's status.json); the
"scored" moment is when status.json first shows the prediction done. Prints JSON with the targets
(warm single upload scored and visible within 1.0 s p95; a 200-image burst fully scored in < 60 s
with two workers) and whether they were met. Exits 1 if anything was lost, duplicated or failed;
missed targets are reported, not an error. See bench/harness.py for how the app is started.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import App, Client, burst, lesion_image, percentile, wait_scored  # noqa: E402

TARGET_SINGLE_P95_S = 1.0
TARGET_BURST_S = 60.0


def _r(value):
    return None if value is None else round(value, 3)


def warm_singles(app: App, client: Client, n: int, seed_base: int) -> dict:
    """n sequential single uploads into one fresh case: upload → done visible in status.json."""
    case_id, lesion_id = client.new_lesion(f"SINGLE-{seed_base}")
    token = client.token(f"/lesions/{lesion_id}/")
    latencies, requests_s = [], []
    for k in range(n):
        data = lesion_image(seed_base + k)
        start = time.monotonic()
        response = client.upload(lesion_id, f"single-{seed_base + k}.jpg", data, token=token)
        requests_s.append(time.monotonic() - start)
        if response.status_code != 302:
            raise RuntimeError(f"single upload answered {response.status_code}")
        seen = wait_scored(client, case_id, k + 1, timeout=120, interval=0.02)
        latencies.append(seen - start)
    return {
        "n": n, "poll_interval_s": 0.02, "case_id": case_id,
        "upload_request_p50_s": _r(percentile(requests_s, 50)),
        "upload_to_visible_p50_s": _r(percentile(latencies, 50)),
        "upload_to_visible_p95_s": _r(percentile(latencies, 95)),
        "upload_to_visible_max_s": _r(max(latencies)),
        "server_side_s": app.verify_db([case_id])["server_side_s"],
    }


def warm_every_worker(app: App, client: Client, seed_base: int, rounds: int = 6) -> dict[str, int]:
    """Upload pairs concurrently until every inference worker has scored at least one image
    (so TensorFlow and the model are loaded in each before anything is timed)."""
    case_id, lesion_id = client.new_lesion(f"WARM-{seed_base}")
    stats: dict[str, int] = {}
    sent = 0
    for r in range(rounds):
        stats = app.celery_stats()
        if all(stats.get(name, 0) > 0 for name in app.worker_names()):
            break
        n = len(app.worker_names())
        threads = []
        for j in range(n):
            data = lesion_image(seed_base + sent + j)
            threads.append(threading.Thread(target=client.upload, args=(lesion_id, f"warm-{seed_base + sent + j}.jpg", data)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent += n
        wait_scored(client, case_id, sent, timeout=300)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--singles", type=int, default=20)
    parser.add_argument("--max-workers", type=int, default=2)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--keep-var", action="store_true")
    args = parser.parse_args(argv)
    # SIGTERM (a CI timeout) must still stop every process the harness started: exit via finally.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    app = App(inference_workers=1, database_url=args.database_url, keep_var=args.keep_var,
              model_dir=Path(args.model_dir) if args.model_dir else None)
    report: dict = {"burst_size": args.burst, "clients": args.clients}
    violations: list[str] = []
    try:
        app.start()
        ready_at = time.monotonic()
        spawned = app.started_at["inference1"]
        client = Client(app.base_url, "clinician", app.passwords["clinician"])
        case_id, lesion_id = client.new_lesion("COLD-1")
        upload_at = time.monotonic()
        if client.upload(lesion_id, "cold.jpg", lesion_image(1)).status_code != 302:
            raise RuntimeError("cold upload rejected")
        seen = wait_scored(client, case_id, 1, timeout=300, interval=0.02)
        report["cold_start"] = {
            "worker_process_start_to_ready_s": _r(ready_at - spawned),
            "worker_process_start_to_first_prediction_s": _r(seen - spawned),
            "first_upload_to_score_s": _r(seen - upload_at),
            "note": "TensorFlow and the model load in the pool child on its first task",
        }
        report["model_version"] = app.health().get("model", {}).get("version")
        warm_every_worker(app, client, seed_base=10)
        report["worker_rss_mib_after_warmup"] = app.worker_rss_mb()
        report["warm_single_upload"] = warm_singles(app, client, args.singles, seed_base=100)
        report["warm_single_upload"]["target_p95_s"] = TARGET_SINGLE_P95_S
        report["warm_single_upload"]["target_met"] = (
            report["warm_single_upload"]["upload_to_visible_p95_s"] <= TARGET_SINGLE_P95_S)

        report["bursts"] = {}
        for workers in range(1, args.max_workers + 1):
            while len(app.worker_names()) < workers:
                app.add_inference_worker()
            per_worker = warm_every_worker(app, client, seed_base=workers * 1000)
            result = burst(app, uploads=args.burst, clients=args.clients, tag=f"w{workers}",
                           seed_base=workers * 100_000, timeout=args.timeout)
            result["tasks_per_worker_before"] = per_worker
            result["tasks_per_worker_after"] = app.celery_stats()
            result["worker_rss_mib"] = app.worker_rss_mb()
            violations += [f"{workers} worker(s): {v}" for v in result.pop("violations")]
            result.pop("case_ids")
            report["bursts"][f"{workers}_worker{'s' if workers > 1 else ''}"] = result
        last = report["bursts"][f"{args.max_workers}_worker{'s' if args.max_workers > 1 else ''}"]
        report["burst_target"] = {"target_s": TARGET_BURST_S, "workers": args.max_workers,
                                  "all_scored_s": last["all_scored_s"],
                                  "target_met": bool(last["all_scored_s"] and last["all_scored_s"] < TARGET_BURST_S
                                                     and args.burst >= 200)}
    except Exception as exc:
        violations.append(f"run aborted: {type(exc).__name__}: {exc}")
        report["logs_tail"] = app.tail_logs(1500)
    finally:
        app.stop()
    report["violations"] = violations
    report["ok"] = not violations
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
