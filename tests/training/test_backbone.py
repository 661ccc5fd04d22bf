"""The bundled ImageNet MobileNetV2 backbone (training.backbone): its file is rebuilt from the npm
package's format, it loads by layer name into `build_mobilenet_v2`, and a model on it goes through
the whole artifact path (export, fast runner, Grad-CAM, out-of-domain features) like the CNN."""
import base64
import io
import tarfile

import numpy as np
import pytest


def _fake_tarball(path, tensors):
    """An npm-style tarball with a TF.js model module and one base64 shard of uint8 weights."""
    blob = b"".join(q.tobytes() for _, q, _ in tensors)
    entries = ",".join(
        f'{{name:"{name}",shape:[{",".join(map(str, q.shape))}],dtype:"float32",'
        f'quantization:{{min:{lo},scale:{scale},dtype:"uint8"}}}}' for name, q, (lo, scale) in tensors)
    manifest = f'[{{paths:["group1-shard1of1"],weights:[{entries}]}}]'
    model_js = f"module.exports={{modelTopology:{{}},weightsManifest:{manifest}}}"
    shard_js = f'module.exports="{base64.b64encode(blob).decode()}"'
    with tarfile.open(path, "w:gz") as tar:
        for name, text in (("model.min.js", model_js), ("group1-shard1of1.min.js", shard_js)):
            data = text.encode()
            info = tarfile.TarInfo("package/dist/models/mobilenet_v2/" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_import_dequantises_and_drops_the_dense_head(tmp_path):
    from training.backbone import import_nsfwjs, load_backbone_weights

    rng = np.random.default_rng(0)
    kernel = rng.integers(0, 256, (3, 3, 3, 32), dtype=np.uint8)
    gamma = rng.integers(0, 256, (32,), dtype=np.uint8)
    head = rng.integers(0, 256, (1280, 4000), dtype=np.uint8)  # big enough for the shard's base64
    _fake_tarball(tmp_path / "nsfwjs.tgz", [("Conv1/kernel", kernel, (-0.5, 0.004)),
                                            ("dense_1/kernel", head, (-1.0, 0.01)),
                                            ("bn_Conv1/gamma", gamma, (0.25, 0.002))])
    info = import_nsfwjs(tmp_path / "nsfwjs.tgz", tmp_path / "w.npz")
    assert info["tensors"] == 2 and len(info["sha256"]) == 64
    w = load_backbone_weights(tmp_path / "w.npz")
    assert sorted(w) == ["Conv1/kernel", "bn_Conv1/gamma"]
    np.testing.assert_allclose(w["Conv1/kernel"], kernel * 0.004 - 0.5, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(w["bn_Conv1/gamma"], gamma * 0.002 + 0.25, rtol=1e-6, atol=1e-6)


def test_import_refuses_a_manifest_that_does_not_cover_the_shard(tmp_path):
    from training.backbone import import_nsfwjs

    q = np.zeros((3, 3, 3, 500), np.uint8)
    _fake_tarball(tmp_path / "a.tgz", [("Conv1/kernel", q, (0.0, 1.0))])
    with tarfile.open(tmp_path / "a.tgz") as tar:  # rewrite the manifest with a smaller shape
        model_js = tar.extractfile("package/dist/models/mobilenet_v2/model.min.js").read().decode()
        shard_js = tar.extractfile("package/dist/models/mobilenet_v2/group1-shard1of1.min.js").read().decode()
    with tarfile.open(tmp_path / "b.tgz", "w:gz") as tar:
        for name, text in (("model.min.js", model_js.replace("500", "499")), ("group1-shard1of1.min.js", shard_js)):
            info = tarfile.TarInfo("package/dist/models/mobilenet_v2/" + name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    with pytest.raises(ValueError, match="covers"):
        import_nsfwjs(tmp_path / "b.tgz", tmp_path / "w.npz")


def test_bundled_weights_load_by_name_and_freeze_the_early_blocks():
    from training.backbone import BACKBONE_FILE, assign_backbone, describe, load_backbone_weights
    from training.config import TrainConfig

    weights = load_backbone_weights()
    cfg = TrainConfig(backbone="mobilenet_v2", freeze_blocks=6, image_size=64, mixed_precision="fp32")
    model = cfg.build_model()
    assert assign_backbone(model, weights) == len({k.rsplit("/", 1)[0] for k in weights}) == 104
    np.testing.assert_array_equal(model.get_layer("Conv1").get_weights()[0], weights["Conv1/kernel"])
    assert not model.get_layer("block_5_project").trainable and model.get_layer("block_6_expand").trainable
    assert model.get_layer("logits").trainable and cfg.last_conv_layer == "out_relu"
    # fine-tuned BatchNorm layers follow the new data within an epoch or so (Keras builds 0.999)
    assert model.get_layer("block_6_expand_BN").momentum == 0.99
    assert describe()["sha256"] and BACKBONE_FILE.stat().st_size < 3_000_000
    with pytest.raises(ValueError, match="backbone must be one of"):
        TrainConfig(backbone="resnet50")


def test_the_default_is_the_pretrained_backbone_and_older_cards_stay_scratch_cnns():
    """New runs (the admin's included) start from the ImageNet weights; a card written before the
    option existed records no backbone and describes the residual CNN it was trained as."""
    from training.config import SHIPPED_RECIPE, TrainConfig
    from training.testing import tiny_config

    assert TrainConfig().backbone == TrainConfig(**SHIPPED_RECIPE).backbone == "mobilenet_v2"
    old = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("backbone", "freeze_blocks")}
    legacy = TrainConfig.from_dict(old)
    assert (legacy.backbone, legacy.freeze_blocks, legacy.last_conv_layer) == ("scratch", 0, "last_conv")
    assert tiny_config().backbone == "scratch"


def test_mismatched_shapes_are_refused():
    from training.backbone import assign_backbone, load_backbone_weights
    from training.config import TrainConfig

    model = TrainConfig(backbone="mobilenet_v2", image_size=64).build_model()
    weights = load_backbone_weights()
    weights["Conv1/kernel"] = weights["Conv1/kernel"][..., :16]
    with pytest.raises(ValueError, match="layer Conv1"):
        assign_backbone(model, weights)


@pytest.mark.slow
def test_a_mobilenet_artifact_scores_explains_and_checks_domain_like_the_cnn(tmp_path):
    from mlcore.explain import gradcam
    from mlcore.model_store import load_model
    from mlcore.ood import feature_widths
    from training.testing import make_tiny_model_dir

    out = make_tiny_model_dir(tmp_path / "mnv2", backbone="mobilenet_v2", freeze_blocks=6, epochs=1,
                              learning_rate=1e-3, assessed=True)
    model = load_model(out)
    assert model.card["last_conv_layer"] == "out_relu"
    assert model.card["training"]["backbone"]["initial_weights"] == "ImageNet"
    x = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(model.predict_logits(x), model.predict_logits_reference(x), atol=0.05)
    logits, feats = model.predict_logits_and_features(x)
    assert logits.shape == (5, 9) and feats.shape == (5, sum(feature_widths(model.keras_model)))
    heat = gradcam(model, x[0].astype(np.uint8))
    assert heat.shape[:2] == (32, 32) and np.isfinite(heat).all()
