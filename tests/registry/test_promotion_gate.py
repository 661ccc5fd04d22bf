"""The promotion gate rule, on plain dicts."""
from classifier.promotion import evaluate_gate

ACTIVE = {"version": "v1", "melanoma_auc": 0.90, "melanoma_sensitivity": 0.92}


def _gate(auc: float, sensitivity: float, active=ACTIVE) -> dict:
    return {"candidate": {"melanoma_auc": auc, "melanoma_sensitivity": sensitivity}, "active": active}


def test_accepts_equal_or_slightly_lower_auc_with_target_sensitivity():
    assert evaluate_gate(_gate(0.895, 0.91), active_version="v1", target_sensitivity=0.9).allowed
    assert evaluate_gate(_gate(0.93, 0.90), active_version="v1", target_sensitivity=0.9).allowed


def test_refuses_auc_drop_over_one_point():
    result = evaluate_gate(_gate(0.885, 0.95), active_version="v1", target_sensitivity=0.9)
    assert not result.allowed
    assert any("below the active model" in reason for reason in result.reasons)


def test_refuses_sensitivity_below_target():
    result = evaluate_gate(_gate(0.95, 0.85), active_version="v1", target_sensitivity=0.9)
    assert not result.allowed
    assert any("below the target" in reason for reason in result.reasons)


def test_refuses_comparison_against_another_active_version():
    result = evaluate_gate(_gate(0.95, 0.95), active_version="v2", target_sensitivity=0.9)
    assert not result.allowed and "re-run the comparison" in result.reasons[0]


def test_refuses_without_measurements_and_builds_side_by_side_rows():
    assert not evaluate_gate(None, active_version="v1", target_sensitivity=0.9).allowed
    rows = evaluate_gate(_gate(0.95, 0.95), active_version="v1", target_sensitivity=0.9).rows
    auc_row = next(r for r in rows if r["metric"] == "Melanoma AUC")
    assert auc_row["candidate"] == 0.95 and auc_row["active"] == 0.90 and abs(auc_row["delta"] - 0.05) < 1e-9


def test_first_model_needs_only_the_sensitivity():
    assert evaluate_gate(_gate(0.7, 0.91, active=None), active_version=None, target_sensitivity=0.9).allowed
