"""Load test: N distinct uploads from C concurrent logged-in clients against the real app, then
verify that every image was scored exactly once (nothing lost, nothing duplicated).

    python bench/load.py [--uploads 200] [--clients 8] [--workers 1] [--database-url URL]
                         [--model-dir DIR] [--redis-url URL] [--keep-var]

Starts, in a temporary var dir: embedded Redis (unless --redis-url), a fresh SQLite database
(unless --database-url), migrations, the demo accounts, gunicorn and --workers inference workers
(bench/harness.py). Logs in as the demo clinician over HTTP, creates a patient, case and lesion per
client through the real forms, uploads, polls each case's status.json until everything is done,
then checks the database. Prints JSON; exits 1 on any violation (lost, duplicated, failed or
rejected upload), 2 if the app could not start.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import App, burst  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="inference worker processes (concurrency 1 each)")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--model-dir", default=None, help="default: classifier/shipped_model")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for all scoring")
    parser.add_argument("--poll-interval", type=float, default=0.2)
    parser.add_argument("--keep-var", action="store_true", help="keep the temporary var dir (logs, database)")
    args = parser.parse_args(argv)
    # SIGTERM (a CI timeout) must still stop every process the harness started: exit via finally.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.uploads < 1 or args.clients < 1 or args.clients > args.uploads:
        parser.error("need 1 <= clients <= uploads")

    started = time.monotonic()
    app = App(inference_workers=args.workers, database_url=args.database_url, redis_url=args.redis_url,
              model_dir=Path(args.model_dir) if args.model_dir else None, keep_var=args.keep_var)
    try:
        app.start()
    except Exception as exc:
        print(json.dumps({"ok": False, "error": f"app did not start: {exc}"}))
        return 2
    try:
        startup_s = time.monotonic() - started
        result = burst(app, uploads=args.uploads, clients=args.clients, tag="load", seed_base=1_000_000,
                       timeout=args.timeout, poll_interval=args.poll_interval)
        health = app.health()
        result.update(
            ok=not result["violations"],
            inference_workers=args.workers,
            model_version=health.get("model", {}).get("version"),
            app_startup_s=round(startup_s, 2),
            database="url" if args.database_url else "sqlite (fresh)",
            var_dir=str(app.var_dir) if args.keep_var else None,
        )
        if result["violations"]:
            result["logs_tail"] = app.tail_logs(1500)
    finally:
        app.stop()
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
