"""Checks on the real data (marker `data`). Fail when the data is missing and CI=true; skip otherwise."""
import os

import pytest

from training.config import cache_dir, data_dir


def _data_root():
    root = data_dir()
    if not (root / "isic-9class").is_dir() or not (root / "ham10000" / "HAM10000_metadata.csv").is_file():
        msg = f"real data not found under {root} (set SECONDLOOK_DATA_DIR)"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return root


@pytest.fixture(scope="module")
def audit():
    from training.audit import run_audit

    return run_audit(_data_root(), cache_dir(), progress=False)


@pytest.mark.data
def test_audit_finds_known_duplicates(audit):
    c = audit.report["counts"]
    # all three collections: isic-9class, ham10000 and ham10000-more
    assert c["records_by_source"] == {"isic-9class": 2359, "ham10000": 5984, "ham10000-more": 3964}
    assert c["isic_duplicate_ids"] >= 100  # ids in several class folders / Train+Test
    assert c["isic_ids_in_train_and_test"] > 0
    # DATA.md: ~743 ISIC ids shared with ham10000 and ~690 with ham10000-more
    assert 1350 <= c["ids_in_both_datasets"] <= 1500
    assert c["ids_in_both_datasets_label_disagree"] > 0
    ids = [r.isic_id for r in audit.records]
    assert len(ids) == len(set(ids)), "an identity appears twice in the cleaned set"
    assert c["clean_images"] == len(ids)
    assert "(" not in "".join(ids)  # copy suffixes like ISIC_x(1) are normalised


@pytest.mark.data
def test_no_lesion_crosses_splits(audit):
    from training.config import TrainConfig
    from training.splits import split_by_lesion

    cfg = TrainConfig()
    s = split_by_lesion(audit.records, audit.groups, seed=cfg.seed)
    assert s == split_by_lesion(audit.records, audit.groups, seed=cfg.seed)
    by = {r.isic_id: r for r in audit.records}
    where: dict = {}
    for name, ids in s.items():
        for i in ids:
            for key in (by[i].lesion_id, audit.groups[i]):
                assert where.setdefault(key, name) == name, f"lesion {key} in {name} and {where[key]}"
    assert sum(len(v) for v in s.values()) == len(audit.records)
    n = len(audit.records)
    assert 0.12 * n < len(s["test"]) < 0.18 * n


@pytest.mark.data
def test_shipped_model_split_matches_data():
    import json

    from mlcore.model_store import SHIPPED_MODEL_DIR

    _data_root()
    card_path = SHIPPED_MODEL_DIR / "model_card.json"
    if not card_path.is_file():
        pytest.fail("no shipped model")
    card = json.loads(card_path.read_text())
    from training.audit import run_audit

    a = run_audit(data_dir(), cache_dir(), progress=False)
    ids = {r.isic_id for r in a.records}
    assert set(card["split_ids"]["test"]) <= ids
    assert not set(card["split_ids"]["test"]) & set(card["split_ids"]["train"])


def test_shipped_model_was_trained_with_the_shipped_recipe():
    """Every CNN in the shipped model was trained with the shipped recipe (SHIPPED_RECIPE: the
    default config with every block fine-tuned, on an accelerator) or, since v3.2, is such a network
    restarted on a CPU by RESTART_RECIPE on its lesion split with its offset inside the loss, as the
    README says, and its card says where its loop ran and what it started from; the default the
    admin retrains with stays inside 60 minutes; an ensemble's members all share one split."""
    import json

    from mlcore.model_store import SHIPPED_MODEL_DIR
    from training.config import RESTART_RECIPE, SHIPPED_RECIPE, TrainConfig

    card = json.loads((SHIPPED_MODEL_DIR / "model_card.json").read_text())
    members = card["ensemble"]["members"] if card.get("ensemble") else [card["training"]]
    recipe = TrainConfig(**SHIPPED_RECIPE)
    for member in members:
        shipped = member["config"]
        # every field the card records is a config field; a field added since (absent from the
        # card) must default to the behaviour the shipped model was trained with
        assert set(shipped) <= set(TrainConfig().to_dict())
        start = member.get("warm_start")
        if start:
            # the paths the run read its start from (the card names that model by version and sha256),
            # the precision the CPU allowed and the TTA the run chose on validation (tta=auto)
            given = {k: shipped[k] for k in ("pretrained", "offset_in_loss_from", "mixed_precision", "tta")}
            assert member["tta_choice"]["chosen"] == given["tta"]
            expected = TrainConfig.from_dict(recipe.to_dict() | RESTART_RECIPE | given)
            assert TrainConfig.from_dict(shipped) == expected and given["offset_in_loss_from"]
            assert start["keeps_split"] and len(start["sha256"]) == 64
            assert member["offset_in_loss"]["version"] == start["version"]
            assert member["accelerator"] == "cpu"
        else:
            expected = recipe
            assert TrainConfig.from_dict(shipped) == recipe
            assert member.get("accelerator", "cpu") != "cpu" and member.get("backend") == "jax"
            assert TrainConfig.from_dict(shipped).effective_split_seed == TrainConfig().seed
        assert member["total_minutes"] <= expected.time_budget_min + 15
    assert 0 < TrainConfig().run_budget_min <= 60  # the admin's default run: <= 60 minutes in all
