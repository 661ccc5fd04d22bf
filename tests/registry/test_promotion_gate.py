"""Reading a stored promotion gate (metrics["gate"]) against the registry as it is now."""
import pytest

from classifier.promotion import (BOOTSTRAP_RESAMPLES, GATE_FORMAT, GateResult, current_rules, evaluate_gate,
                                  failed_measurement)


def _stored(allowed: bool, active: str | None = "v1", benchmark: str = "frozen-v1",
            resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    rows = [{"key": "melanoma_auc", "metric": "Melanoma AUC", "candidate": 0.90, "active": 0.89, "difference": 0.01,
             "ci_low": -0.01, "ci_high": 0.03, "margin": 0.02, "rule": "95 % CI low >= -0.02", "gated": True,
             "passed": True}]
    return GateResult(allowed, ["reason"], rows, benchmark={"version": benchmark},
                      candidate={"version": "cand", "model_sha256": "c" * 64},
                      active={"version": active, "model_sha256": "a" * 64} if active else None,
                      bootstrap={"resamples": resamples, "seed": 0}, rules=current_rules()).to_dict()


def test_a_stored_paired_result_decides():
    assert evaluate_gate(_stored(True), active_version="v1", benchmark_version="frozen-v1").allowed
    refused = evaluate_gate(_stored(False), active_version="v1")
    assert not refused.allowed and refused.reasons == ["reason"] and refused.rows[0]["ci_low"] == -0.01


def test_refuses_comparison_against_another_active_version():
    result = evaluate_gate(_stored(True), active_version="v2", target_sensitivity=0.9)
    assert not result.allowed and "re-run the comparison" in result.reasons[0]
    assert not evaluate_gate(_stored(True, active=None), active_version="v2").allowed


def test_refuses_a_comparison_on_another_benchmark_version():
    result = evaluate_gate(_stored(True), active_version="v1", benchmark_version="frozen-v2")
    assert not result.allowed and "frozen-v2" in result.reasons[0]


def test_refuses_a_comparison_of_other_model_files_than_the_registry_holds():
    assert evaluate_gate(_stored(True), active_version="v1", candidate_sha256="c" * 64, active_sha256="a" * 64).allowed
    candidate = evaluate_gate(_stored(True), active_version="v1", candidate_sha256="d" * 64, active_sha256="a" * 64)
    assert not candidate.allowed and candidate.reasons[0] == (
        "The comparison scored a candidate model file with sha256 cccccccccccc..., but this version's registered "
        "file is dddddddddddd...: re-run the comparison (python manage.py compare_on_benchmark cand).")
    active = evaluate_gate(_stored(True), active_version="v1", candidate_sha256="c" * 64, active_sha256="b" * 64)
    assert not active.allowed and active.reasons[0].startswith(
        "The comparison scored a model file of v1 with sha256 aaaaaaaaaaaa..., but the registry's v1 is bbbbbbbbbbbb...")
    unknown = evaluate_gate(_stored(True), active_version="v1", candidate_sha256="", active_sha256="a" * 64)
    assert not unknown.allowed and "registered file is none" in unknown.reasons[0]


def test_refuses_a_comparison_under_other_rules_or_with_fewer_resamples():
    fewer = evaluate_gate(_stored(True, resamples=30), active_version="v1")
    assert not fewer.allowed and fewer.reasons[0] == (
        f"The comparison's intervals come from 30 bootstrap resamples, fewer than the {BOOTSTRAP_RESAMPLES} the gate "
        "requires: re-run the comparison (python manage.py compare_on_benchmark cand).")
    older_rules = _stored(True)
    older_rules["rules"]["max_auc_drop"] = 0.05
    result = evaluate_gate(older_rules, active_version="v1")
    assert not result.allowed and result.reasons[0].startswith("The comparison was judged by other rules")
    assert "re-run the comparison" in result.reasons[0]
    no_record = _stored(True)
    del no_record["bootstrap"], no_record["rules"]
    both = evaluate_gate(no_record, active_version="v1")
    assert not both.allowed and len(both.reasons) == 3 and "an unknown number of" in both.reasons[1]


def test_refuses_without_measurements_or_with_the_old_unpaired_comparison():
    assert not evaluate_gate(None, active_version="v1", target_sensitivity=0.9).allowed
    old = {"heldout": {"n_images": 10}, "candidate": {"melanoma_auc": 0.99, "melanoma_sensitivity": 0.99},
           "active": {"version": "v1", "melanoma_auc": 0.5}}
    result = evaluate_gate(old, active_version="v1", target_sensitivity=0.9)
    assert not result.allowed and "own test split" in result.reasons[0]


def test_a_failed_measurement_is_refused_with_its_error():
    gate = failed_measurement("3 benchmark images are not in the data")
    assert gate["format"] == GATE_FORMAT
    result = evaluate_gate(gate, active_version="v1")
    assert not result.allowed and "not in the data" in result.reasons[0]


def test_the_first_model_keeps_its_stored_decision():
    assert evaluate_gate(_stored(True, active=None), active_version=None).allowed


def _score_synthetic(monkeypatch, *, ph2: bool):
    """compare_artifacts' scoring on synthetic scores: the benchmark always, PH2 when ``ph2``
    (otherwise the real PH2 loader finds no folder)."""
    from tests.support.gate_helpers import scored, synthetic_set
    from training.benchmark import CURRENT_VERSION
    from training.benchmark import scoring

    sets = {CURRENT_VERSION: synthetic_set(400, name=CURRENT_VERSION), scoring.PH2_NAME: synthetic_set(
        60, seed=1, name=scoring.PH2_NAME)}
    monkeypatch.setattr(scoring, "benchmark_images", lambda *a, **k: sets[CURRENT_VERSION][0])
    if ph2:
        monkeypatch.setattr(scoring, "ph2_images", lambda data_root: sets[scoring.PH2_NAME][0])
    monkeypatch.setattr(scoring, "score", lambda model_dir, images, cache_dir: scored(images, sets[images.name][1]))


def _card(model_dir, version: str, **split_ids):
    """A model directory holding only a model card (what the benchmark check reads): ``split_ids``
    as given (train=[...], val=[...]), none when none is given."""
    import json

    model_dir.mkdir(parents=True, exist_ok=True)
    card = {"version": version} | ({"split_ids": {"train": [], "val": [], "test": []} | split_ids} if split_ids else {})
    (model_dir / "model_card.json").write_text(json.dumps(card))
    return model_dir


def test_a_missing_ph2_is_said_in_place_of_its_table(monkeypatch, tmp_path):
    from classifier.promotion import PH2_NOT_FOUND, compare_artifacts

    _card(tmp_path / "cand", "cand", train=["I_TRAINED"])
    _score_synthetic(monkeypatch, ph2=False)
    missing = compare_artifacts(tmp_path / "cand", None, tmp_path / "no-data", None, n_resamples=20)
    assert missing.external == [] and missing.external_note == PH2_NOT_FOUND
    assert GateResult.from_dict(missing.to_dict()).external_note == PH2_NOT_FOUND  # stored with the gate
    assert compare_artifacts(tmp_path / "cand", None, tmp_path / "no-data", None, external=False,
                             n_resamples=20).external_note is None  # not asked for: nothing to say

    _score_synthetic(monkeypatch, ph2=True)
    found = compare_artifacts(tmp_path / "cand", None, tmp_path / "no-data", None, n_resamples=20)
    assert found.external and found.external_note is None


def test_the_version_page_says_ph2_was_not_scored(admin_client, monkeypatch, tmp_path, db):
    from classifier.models import ModelVersion
    from classifier.promotion import compare_artifacts

    _card(tmp_path / "cand", "cand", train=["I_TRAINED"])
    _score_synthetic(monkeypatch, ph2=False)
    gate = compare_artifacts(tmp_path / "cand", None, tmp_path / "no-data", None, target_sensitivity=0.5,
                             n_resamples=20).to_dict()
    version = ModelVersion.objects.create(version="cand", status="ready", metrics={"gate": gate})
    page = admin_client.get(f"/admin/classifier/modelversion/{version.pk}/change/").content.decode()
    assert 'id="gate-table"' in page and 'id="gate-external"' not in page
    assert '<p style="padding:.5rem 1rem" id="gate-external-note">PH2 not scored: dataset not found on this server.' \
           in page


def test_each_scoring_step_of_the_comparison_is_announced_before_it_starts(monkeypatch, tmp_path):
    """A training run's heartbeat: the run reports each model x image-set step, so a slow
    comparison never looks like a dead worker to the stale-run sweep."""
    from classifier.promotion import compare_artifacts
    from training.benchmark import CURRENT_VERSION, scoring

    _card(tmp_path / "cand", "cand", train=["I_TRAINED"])
    _card(tmp_path / "act", "act", train=["I_TRAINED"])
    _score_synthetic(monkeypatch, ph2=True)
    steps = []
    compare_artifacts(tmp_path / "cand", tmp_path / "act", tmp_path / "no-data", None, n_resamples=20,
                      on_step=steps.append)
    assert steps == [f"scoring the candidate model on {CURRENT_VERSION}",
                     f"scoring the candidate model on {scoring.PH2_NAME}",
                     f"scoring the active model on {CURRENT_VERSION}",
                     f"scoring the active model on {scoring.PH2_NAME}"]


def test_a_model_that_cannot_be_shown_to_have_kept_the_benchmark_out_is_not_compared(monkeypatch, tmp_path,
                                                                                      settings, db):
    """No split in its card, or a benchmark image (or another image of a benchmark lesion) in its
    training or validation: a failed measurement with the reason, which the gate refuses."""
    from classifier.promotion import check_kept_out, compare_artifacts
    from classifier.retraining import measure_gate
    from training import benchmark as bm
    from training.audit import AuditResult
    from training.benchmark import scoring
    from training.data import ImageRecord
    from tests.support.gate_helpers import synthetic_set

    small = bm.write_benchmark(tmp_path / "small.json", "small-v1", [
        bm.BenchmarkImage("ISIC_B1", "LES_B", "LES_B", "ham10000"),
        bm.BenchmarkImage("ISIC_C1", "LES_C", "LES_C", "ham10000")], {"from": "test"})
    monkeypatch.setenv(bm.ENV_FILE, str(tmp_path / "small.json"))
    settings.SECONDLOOK_DATA_DIR, settings.SECONDLOOK_CACHE_DIR = tmp_path / "no-data", tmp_path / "cache"
    images, _ = synthetic_set(50, name="small-v1")

    def record(image_id: str, lesion_id: str) -> ImageRecord:
        return ImageRecord(f"/data/{image_id}.jpg", image_id, lesion_id, frozenset({"nevus"}), "ham10000")

    data = [record("ISIC_B1", "LES_B"), record("ISIC_B2", "LES_B"), record("ISIC_C1", "LES_C"),
            record("ISIC_OK", "LES_OK")]
    images.audit = AuditResult(data, {r.isic_id: r.lesion_id for r in data}, {})
    monkeypatch.setattr(scoring, "benchmark_images", lambda *a, **k: images)
    monkeypatch.setattr(scoring, "score", lambda *a, **k: pytest.fail("a model was scored before the check"))

    _card(tmp_path / "no-split", "no-split")
    _card(tmp_path / "same-lesion", "same-lesion", train=["ISIC_OK"], val=["ISIC_B2"])
    _card(tmp_path / "benchmark-image", "benchmark-image", train=["ISIC_C1"])
    clean = _card(tmp_path / "clean", "clean", train=["ISIC_OK", "REVIEW_0000001"])

    check_kept_out(clean, role="candidate", benchmark=small, audit=images.audit)  # app images, other lesions: fine
    with pytest.raises(bm.BenchmarkLeakError, match="candidate model no-split has no split_ids in its model card"):
        compare_artifacts(tmp_path / "no-split", None, tmp_path / "no-data", None, benchmark=small)
    with pytest.raises(bm.BenchmarkLeakError, match="1 candidate model same-lesion train/val images belong to lesions "
                                                    "of the frozen benchmark small-v1 \\(e.g. ISIC_B2\\)"):
        compare_artifacts(tmp_path / "same-lesion", clean, tmp_path / "no-data", None, benchmark=small)
    with pytest.raises(bm.BenchmarkLeakError, match="1 active model benchmark-image train/val images are images of "
                                                    "the frozen benchmark small-v1 \\(e.g. ISIC_C1\\)"):
        compare_artifacts(clean, tmp_path / "benchmark-image", tmp_path / "no-data", None, benchmark=small)

    gate = measure_gate(tmp_path / "same-lesion", None, target_sensitivity=0.9)  # what a finished run stores
    assert "BenchmarkLeakError" in gate["error"] and "ISIC_B2" in gate["error"] and not gate["allowed"]
    refused = evaluate_gate(gate, active_version=None)
    assert not refused.allowed and "same-lesion train/val images belong to lesions" in refused.reasons[0]
