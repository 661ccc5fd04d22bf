"""Reading a stored promotion gate (metrics["gate"]) against the registry as it is now."""
from classifier.promotion import GATE_FORMAT, GateResult, evaluate_gate, failed_measurement


def _stored(allowed: bool, active: str | None = "v1", benchmark: str = "frozen-v1") -> dict:
    rows = [{"key": "melanoma_auc", "metric": "Melanoma AUC", "candidate": 0.90, "active": 0.89, "difference": 0.01,
             "ci_low": -0.01, "ci_high": 0.03, "margin": 0.02, "rule": "95 % CI low >= -0.02", "gated": True,
             "passed": True}]
    return GateResult(allowed, ["reason"], rows, benchmark={"version": benchmark},
                      candidate={"version": "cand"}, active={"version": active} if active else None).to_dict()


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
