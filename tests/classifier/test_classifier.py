import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlcore.labels import CLASSES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from training.testing import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from mlcore.model_store import load_model

    return load_model(tiny_dir)


def test_classifier_import_does_not_import_tensorflow():
    code = ("import sys, classifier, mlcore.model_store, mlcore.inference, mlcore.preprocess, "
            "mlcore.explain; print('tensorflow' in sys.modules or 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_artifact_is_complete(tiny_dir):
    for f in ("model.keras", "model_card.json", "model_card.md", "metrics.json", "audit.json"):
        assert (tiny_dir / f).is_file(), f
    card = json.loads((tiny_dir / "model_card.json").read_text())
    assert card["classes"] == list(CLASSES)
    assert card["input_size"] == 32 and card["temperature"] > 0
    assert set(card["thresholds"]) == {"melanoma", "malignancy"}
    assert set(card["split_ids"]) == {"train", "val", "test"}
    for k in ("version", "data_fingerprint", "model_sha256", "training", "metrics", "audit_counts"):
        assert k in card
    by_source = card["metrics"]["subgroups"]["source"]["synthetic"]
    assert by_source["n"] == card["metrics"]["n_images"]
    assert by_source["melanoma_auc"] == pytest.approx(card["metrics"]["melanoma_auc"])
    assert "| source | synthetic | 90 |" in (tiny_dir / "model_card.md").read_text()


@pytest.mark.slow
def test_load_and_predict(tiny):
    from mlcore.inference import predict_images

    assert tiny.version == "tiny-test-0" and tiny.classes == list(CLASSES)
    imgs = [np.zeros((50, 70, 3), np.uint8), np.full((20, 20, 3), 200, np.uint8), np.zeros((64, 64), np.uint8)]
    preds = predict_images(tiny, imgs)
    assert len(preds) == 3
    for p in preds:
        assert list(p.class_probabilities) == list(CLASSES)
        assert sum(p.class_probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert p.melanoma_probability == pytest.approx(p.class_probabilities["melanoma"])
        mal = sum(p.class_probabilities[c] for c in ("melanoma", "basal cell carcinoma",
                                                      "squamous cell carcinoma", "actinic keratosis"))
        assert p.malignancy_score == pytest.approx(mal)
        th = tiny.thresholds
        assert p.flagged == (p.melanoma_probability >= th.melanoma or p.malignancy_score >= th.malignancy)
        assert p.flagged == bool(p.flag_reasons)
        assert p.model_version == tiny.version and p.inference_ms >= 0


def test_corrupt_model_raises(tiny_dir, tmp_path):
    import shutil

    from mlcore.model_store import ModelLoadError, load_model

    d = tmp_path / "bad"
    shutil.copytree(tiny_dir, d)
    with open(d / "model.keras", "ab") as fh:
        fh.write(b"junk")
    with pytest.raises(ModelLoadError, match="sha256"):
        load_model(d)
    (d / "model.keras").unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        load_model(d)
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "nowhere")


def test_get_model_caches_per_dir(tiny_dir, tmp_path, inference_options):
    import shutil

    from mlcore import model_store

    model_store.clear_cache()
    a = model_store.get_model(tiny_dir)
    assert model_store.get_model(tiny_dir) is a
    d2 = tmp_path / "copy"
    shutil.copytree(tiny_dir, d2)
    b = model_store.get_model(d2)
    assert b is not a
    inference_options(model_dir=d2.resolve())
    assert model_store.default_model_dir() == d2.resolve()
    inference_options(model_dir=model_store.SHIPPED_MODEL_DIR)
    assert model_store.default_model_dir() == model_store.SHIPPED_MODEL_DIR


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_decode_many_formats():
    from mlcore.preprocess import ImageDecodeError, decode_image, prepare_batch

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    cases = {
        "jpeg": _encode(rgb, "JPEG"), "png": _encode(rgb, "PNG"), "tiff": _encode(rgb, "TIFF"),
        "gray": _encode(rgb.convert("L"), "PNG"), "rgba": _encode(rgb.convert("RGBA"), "PNG"),
        "cmyk": _encode(rgb.convert("CMYK"), "JPEG"), "palette": _encode(rgb.convert("P"), "PNG"),
        "16bit": _encode(Image.fromarray((np.arange(1200).reshape(30, 40) * 50).astype(np.uint16)), "PNG"),
    }
    for name, data in cases.items():
        a = decode_image(data)
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3, name
        assert a.shape[:2] == (30, 40), name
    # EXIF orientation 6 = rotate 90 -> height/width swap
    exif = rgb.getexif()
    exif[0x0112] = 6
    a = decode_image(_encode(rgb, "JPEG", exif=exif.tobytes()))
    assert a.shape[:2] == (40, 30)
    for bad in (b"", b"hello", _encode(rgb, "JPEG")[:50]):
        with pytest.raises(ImageDecodeError):
            decode_image(bad)
    b = prepare_batch([a, np.zeros((5, 5, 3), np.uint8)], 32)
    assert b.shape == (2, 32, 32, 3) and b.dtype == np.float32


def test_training_and_inference_resize_identically():
    from mlcore.preprocess import prepare_batch
    from mlcore.imageio import resize_rgb

    a = np.random.default_rng(1).integers(0, 255, (180, 180, 3), dtype=np.uint8)
    assert np.array_equal(prepare_batch([a], 112)[0].astype(np.uint8), resize_rgb(a, 112))


@pytest.mark.slow
def test_predict_bytes_and_gradcam(tiny):
    from mlcore.explain import gradcam, gradcam_overlay_png
    from mlcore.inference import predict_bytes

    img = Image.fromarray(np.random.default_rng(2).integers(0, 255, (45, 60, 3), dtype=np.uint8))
    p = predict_bytes(tiny, _encode(img, "PNG"))
    assert 0 <= p.melanoma_probability <= 1
    h = gradcam(tiny, np.asarray(img), "melanoma")
    assert h.shape == (45, 60) and h.min() >= 0 and h.max() <= 1
    png = gradcam_overlay_png(tiny, np.asarray(img))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(png)).size == (60, 45)


@pytest.mark.slow
def test_predict_cli_csv_contract(tiny_dir, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / "ISIC_1.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 50, 4), dtype=np.uint8), "RGBA").save(folder / "b.png")
    single = tmp_path / "c.tif"
    Image.fromarray(rng.integers(0, 255, (33, 33), dtype=np.uint8)).save(single)
    out = tmp_path / "out.csv"
    r = subprocess.run([sys.executable, "-m", "classifier", "predict", "--model", str(tiny_dir), "--csv",
                        str(out), str(folder), str(single)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(out.open()))
    # the original columns keep their positions; the assessment columns come last
    assert rows[0] == ["image", *CLASSES, "melanoma_probability", "malignancy_score", "flagged", "model_version",
                       "assessable", "assessment_note"]
    assert sorted(r[0] for r in rows[1:]) == ["ISIC_1", "b", "c"]
    for row in rows[1:]:
        probs = [float(x) for x in row[1:10]]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert row[12] in ("0", "1") and row[13] == "tiny-test-0"
        assert (row[14], row[15]) == ("1", "")  # a model without fitted checks assesses every image


@pytest.mark.slow
def test_predict_cli_says_when_the_model_cannot_assess(tiny_assessed_model_dir, tmp_path):
    from training.testing import synthetic_images

    Image.new("RGB", (64, 64), (40, 90, 200)).save(tmp_path / "flat-blue.png")
    Image.fromarray(synthetic_images(5, seed=2)[0][4]).save(tmp_path / "in-domain.png")
    out = tmp_path / "out.csv"
    r = subprocess.run([sys.executable, "-m", "classifier", "predict", "--model", str(tiny_assessed_model_dir),
                        "--csv", str(out), str(tmp_path / "flat-blue.png"), str(tmp_path / "in-domain.png")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = {row["image"]: row for row in csv.DictReader(out.open())}
    assert rows["flat-blue"]["assessable"] == "0" and "retake" in rows["flat-blue"]["assessment_note"]
    assert rows["in-domain"]["assessable"] == "1" and rows["in-domain"]["assessment_note"] == ""


def test_tta_views_and_prediction(tiny):
    from mlcore.keras_model import dihedral_views, predict_logits

    x = np.random.default_rng(4).integers(0, 255, (2, 32, 32, 3)).astype(np.float32)
    views = dihedral_views(x)
    assert len(views) == 8 and len({v.tobytes() for v in views}) == 8
    a = predict_logits(tiny.keras_model, x, tta="dihedral8")
    b = np.mean([predict_logits(tiny.keras_model, v) for v in views], axis=0)
    assert np.allclose(a, b, atol=1e-5)
    # flip4: the image and its three flips, no transposes
    flips = dihedral_views(x, 4)
    assert [v.tobytes() for v in flips] == [v.tobytes() for v in views[:4]]
    assert not any(np.array_equal(v, np.swapaxes(x, 1, 2)) for v in flips)
    c = predict_logits(tiny.keras_model, x, tta="flip4")
    assert np.allclose(c, np.mean([predict_logits(tiny.keras_model, v) for v in flips], axis=0), atol=1e-5)
    # flip2: the image and its left-right mirror image
    mirror = dihedral_views(x, 2)
    assert np.array_equal(mirror[0], x) and np.array_equal(mirror[1], x[:, :, ::-1])
    d = predict_logits(tiny.keras_model, x, tta="flip2")
    assert np.allclose(d, np.mean([predict_logits(tiny.keras_model, v) for v in mirror], axis=0), atol=1e-5)


@pytest.mark.slow
def test_clinical_context_shifts_scores_and_is_reported(tiny):
    """The tiny model learned (from synthetic data) that melanoma patients are older."""
    from mlcore.inference import predict_images
    from mlcore.clinical import ClinicalContext

    assert tiny.clinical is not None
    img = np.random.default_rng(5).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    alone, none_known, old, young = predict_images(tiny, [img] * 4, contexts=[
        None, ClinicalContext(sex="other", site="unknown"), ClinicalContext(age=85, sex="male", site="back"),
        ClinicalContext(age=20, sex="male", site="back")])
    assert predict_images(tiny, [img])[0].melanoma_probability == pytest.approx(alone.melanoma_probability)
    assert none_known.melanoma_probability == pytest.approx(alone.melanoma_probability)
    assert alone.clinical_context is None and none_known.clinical_context is None
    assert old.melanoma_probability > young.melanoma_probability
    assert old.clinical_context == {"age": 85, "sex": "male", "site": "back"}
    with pytest.raises(ValueError, match="2 clinical contexts for 1 images"):
        predict_images(tiny, [img], contexts=[None, None])


def test_predict_cli_takes_the_clinical_context(tiny_dir, tmp_path, capsys):
    from classifier.__main__ import main

    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(6).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    mel = {}
    for age in ("85", "20"):
        out = tmp_path / f"{age}.csv"
        assert main(["predict", "--model", str(tiny_dir), "--csv", str(out), "--age", age, "--site", "back",
                     str(path)]) == 0
        mel[age] = float(list(csv.DictReader(out.open()))[0]["melanoma_probability"])
    assert mel["85"] > mel["20"]
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--model", str(tiny_dir), "--site", "elbow", str(path)])
    assert exc.value.code == 2 and "anatomic site 'elbow' is not known" in capsys.readouterr().err
