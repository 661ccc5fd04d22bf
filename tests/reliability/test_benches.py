"""The benchmarks run in CI at a reduced size: their invariants (every upload scored exactly once,
nothing lost or duplicated, exit code 0) are asserted; their timings are only printed."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
BENCH = ROOT / "bench"


def run_bench(script: str, *args: str, timeout: float = 360) -> tuple[int, dict, str]:
    """Run a benchmark script; on timeout SIGTERM it, so it stops the app processes it started."""
    process = subprocess.Popen([sys.executable, str(BENCH / script), *args], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        pytest.fail(f"{script} ran over {timeout}s\n{stdout[-3000:]}\n{stderr[-3000:]}")
    start = stdout.find("{")
    assert start >= 0, f"no JSON from {script} (exit {process.returncode})\n{stdout[-3000:]}\n{stderr[-3000:]}"
    return process.returncode, json.loads(stdout[start:]), stderr


def test_generated_bench_images_are_distinct_valid_jpegs():
    from bench.harness import lesion_image
    from PIL import Image
    import io

    images = [lesion_image(seed) for seed in (0, 1, 2, 1_000_000)]
    pixels = {Image.open(io.BytesIO(data)).tobytes() for data in images}
    assert len(pixels) == len(images)
    assert all(Image.open(io.BytesIO(data)).format == "JPEG" for data in images)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(480)
def test_load_bench_scores_every_upload_exactly_once():
    code, report, stderr = run_bench("load.py", "--uploads", "20", "--clients", "4", "--timeout", "300")
    assert code == 0 and report["ok"] is True, json.dumps(report, indent=1)[-4000:] + stderr[-2000:]
    assert report["violations"] == []
    assert report["uploads"] == 20 and report["accepted_http_302"] == 20
    db = report["db"]
    assert db["images"] == db["distinct_sha256"] == db["predictions"] == 20
    assert db["by_status"] == {"done": 20}
    assert db["max_per_image_and_version"] == 1 and db["images_without_active_prediction"] == 0
    assert report["upload_to_score_p50_s"] is not None and report["images_scored_per_min"] > 0
    print(json.dumps({k: v for k, v in report.items() if k != "db"}))


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(480)
def test_pipeline_bench_runs_with_one_and_two_workers():
    code, report, stderr = run_bench("pipeline.py", "--burst", "6", "--clients", "3", "--singles", "3",
                                     "--timeout", "300")
    assert code == 0 and report["ok"] is True, json.dumps(report, indent=1)[-4000:] + stderr[-2000:]
    assert set(report["bursts"]) == {"1_worker", "2_workers"}
    for result in report["bursts"].values():
        assert result["db"]["by_status"] == {"done": 6} and result["db"]["max_per_image_and_version"] == 1
    assert set(report["bursts"]["2_workers"]["worker_rss_mib"]) == {"inference1", "inference2"}
    assert report["cold_start"]["worker_process_start_to_first_prediction_s"] > 0
    assert report["warm_single_upload"]["n"] == 3
    print(json.dumps(report["warm_single_upload"]))
