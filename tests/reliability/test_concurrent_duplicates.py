"""The same image uploaded by several browsers at the same moment, through the real web server:
exactly one image, one prediction and one stored file survive; the losers leave no orphan file."""
from __future__ import annotations

import threading

import pytest



@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_concurrent_identical_uploads_store_one_image_and_no_orphans():
    from bench.harness import App, Client, lesion_image, wait_scored

    with App(inference_workers=1, web_workers=2, web_threads=4) as app:
        password = app.passwords["clinician"]
        owner = Client(app.base_url, "clinician", password)
        case_id, lesion_id = owner.new_lesion("DUP-1")
        data = lesion_image(42)
        clients = [Client(app.base_url, "clinician", password) for _ in range(6)]
        tokens = [c.token(f"/lesions/{lesion_id}/") for c in clients]
        barrier = threading.Barrier(len(clients))
        codes: list[int] = []

        def send(i: int) -> None:
            barrier.wait()
            codes.append(clients[i].upload(lesion_id, f"same-{i}.jpg", data, token=tokens[i]).status_code)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(clients))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert codes == [302] * len(clients)  # duplicates are reported, not errors
        wait_scored(owner, case_id, 1, timeout=180)
        db = app.verify_db([case_id])
        assert db["images"] == 1 and db["predictions"] == 1 and db["by_status"] == {"done": 1}, db
        stored = list((app.var_dir / "media" / "lesion-images").iterdir())
        assert len(stored) == 1, stored
        assert len(owner.status(case_id)["predictions"]) == 1
