"""Paths (env-configurable) and the default training configuration."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """SECONDLOOK_DATA_DIR or <repo>/../shared/data (relative to the repo root, not the cwd)."""
    env = os.environ.get("SECONDLOOK_DATA_DIR")
    return Path(env).expanduser().resolve() if env else (REPO_ROOT / ".." / "shared" / "data").resolve()


def cache_dir() -> Path:
    env = os.environ.get("SECONDLOOK_CACHE_DIR")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "var" / "cache"


# The shipped model's recipe (v3): the default network with every block fine-tuned, bf16, up to 40
# epochs in a 5.1-minute budget: trained by `training.accelerated.fit_pack` on one H200 GPU
# (`scripts/accelerator_train.sh shipped`: 35 epochs, JAX compile included) and finished here
# (`python -m training finish`). On this project's 2-core CPU the same loop would take about 4.4
# hours (3.9 s per batch of 64 in fp32, 116 batches an epoch, 35 epochs). The default itself,
# which the admin's "Train a new version" uses on the CPU, keeps blocks 0-5 frozen and stays
# inside 60 minutes. The shipped model is served with flip2 test-time augmentation (the image and
# its mirror image; chosen on validation within issue 17's cost budget, training/README.md).
SHIPPED_RECIPE = {"mixed_precision": "bf16", "freeze_blocks": 0, "epochs": 40, "time_budget_min": 5.1, "tta": "flip2",
                  "run_budget_min": 0.0}
# Fine-tuning a trained model (the admin's "Start from: the active model"): its own settings, then
# this recipe, warm-started from its weights and on its lesion split (training.train.warm_start_split).
# Only the top blocks (11-16 of MobileNetV2) and the head learn, for 3 epochs at a small learning
# rate: on the 2-core CPU the loop takes about 6 minutes. Measured on v3 (training/README.md, third
# session of 2026-12-06): the network improves on validation (one view, no offset: 0.812 -> 0.828).
FINE_TUNE_RECIPE = {"freeze_blocks": 11, "learning_rate": 1e-4, "warmup_epochs": 0.3, "epochs": 3,
                    "time_budget_min": 20.0, "run_budget_min": 30.0, "mixed_precision": "auto", "tta": "auto"}
# v3.2, the shipped model since 2026-12-06: v3.1 (SHIPPED_RECIPE) restarted on the CPU with every block
# unfrozen, a warm restart at half v3's peak learning rate, cosine over a 60-minute loop, with v3.1's
# clinical offset fixed inside the loss (`offset_in_loss_from`) so the continuation learns what age,
# sex and site do not say; 45 minutes on a 2-core AVX-512 BF16 CPU. The command, with v3.1's
# artifact in DIR: `python -m training train --fine-tune DIR --restart` (`restart_config`;
# training/README.md, "Model v3.2").
RESTART_RECIPE = {"freeze_blocks": 0, "learning_rate": 5e-4, "warmup_epochs": 0.5, "epochs": 10,
                  "time_budget_min": 60.0, "run_budget_min": 0.0, "seed": 777, "tta": "auto", "assessment": True}
BACKBONES = ("scratch", "mobilenet_v2")
TTA_AUTO = "auto"  # the test-time augmentation is chosen on validation after training


@dataclass
class TrainConfig:
    seed: int = 1234
    # the lesion split's seed; None = ``seed``. Set it to train another model (another ``seed``:
    # initialisation, shuffling, augmentation) on the same split, e.g. an ensemble member.
    split_seed: int | None = None
    image_size: int = 160
    width: int = 40  # backbone scratch: channels of the first stage
    stages: tuple = (1, 2, 2, 2)  # residual blocks per stage; channels double per stage
    stem_stride: int = 4  # 2 or 4 (4: one more stride-2 conv, for larger inputs)
    dropout: float = 0.2
    epochs: int = 16  # an upper bound: the time budget may end the run first
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.05
    class_weight_power: float = 0.75  # 0 = none, 1 = fully balanced per HAM code
    # > 0: also weight each image by (P(code) / P(code | its source))**source_balance, so that
    # weighted, every collection has the union's class mix and the look of a collection (its
    # device, its resizing) says nothing about the diagnosis. 0 = off.
    source_balance: float = 0.0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    target_sensitivity: float = 0.90
    mixed_precision: str = "auto"  # auto|bf16|fp32
    time_budget_min: float = 55.0  # training-loop budget; LR cosine follows max(step, time) progress
    # the whole run's budget (data, loop, calibration, evaluation, export, assessment); the loop
    # gets what is left of it once the finishing is estimated from the measured speed of its
    # validation passes (training.train.finishing_passes), so the admin's default run ends within
    # it on a slow CPU as on a fast one. 0 = off (only time_budget_min bounds the loop).
    run_budget_min: float = 60.0
    patience: int = 12  # epochs without a new best, counted at full size once the LR has annealed
    # > 0: also average the weights (and BatchNorm statistics) of the epochs that end with the
    # learning rate at or below this fraction of its peak; the average replaces the best epoch
    # only when it scores better on validation. 0 = off.
    average_tail: float = 0.2
    # progressive resizing: > 0 starts training at this input size and grows it to image_size
    # over the first `progressive_until` of the schedule (smaller early epochs are faster, so
    # more epochs fit in the budget); validation and the exported model always use image_size
    progressive_min_size: int = 0
    progressive_until: float = 0.6
    # while the input still grows, validate only every k-th epoch (validation runs at the full
    # size, so it lags there anyway; each skipped pass buys about 1/8 of a full-size epoch)
    validate_growing_every: int = 1
    aug_rotate: bool = True
    aug_zoom: float = 0.2  # random crop: up to this fraction zoom-in
    aug_color: float = 0.15
    aug_zoom_out: float = 0.3  # 30 % of images zoomed out by up to this fraction (smaller lesion)
    aug_hair: float = 0.0  # share of images with drawn hairs over them (training.model.hair_masks)
    aug_device: float = 1.0  # strength of the device augmentation (temperature, gamma, blur, vignette)
    # colour constancy as the model's first layer (mlcore.colour): shades_of_gray | none
    colour_constancy: str = "shades_of_gray"
    # how an image is framed before the resize (mlcore.framing): squash (the whole frame) |
    # lesion (a square crop centred on the lesion, so its size in the input is device-independent)
    framing: str = "squash"
    bootstrap: int = 1000
    # none | flip2 | flip4 | dihedral8: average the logits over 2 / 4 / 8 flips/rotations at
    # inference; auto: flip2 when it raises the validation selection score over none
    # (training.train.choose_tta), the served mode is recorded in the card
    tta: str = "auto"
    # add a per-class logit offset from age, sex and anatomic site (mlcore.clinical), fitted on
    # the training split after the CNN; images without that context keep the CNN's logits
    clinical_context: bool = True
    clinical_l2: float = 1e-3
    # fit the image-quality checks, the out-of-domain detector and the conformal prediction sets
    # (training.assessment) after export
    assessment: bool = True
    pretrained: str = ""  # optional path of a weights file to warm-start from
    # an artifact directory whose lesion split this run keeps without its weights (a warm start keeps
    # its own): a network trained afresh is then validated and tested on exactly that model's images,
    # so the two can be compared or ensembled without one having learnt the other's validation images
    split_from: str = ""
    # knowledge distillation (training.distill): an artifact directory whose network's probabilities
    # (over distill_tta's views, no offset) the loss mixes with the labels at distill_weight
    distill_from: str = ""
    distill_tta: str = "dihedral8"
    distill_weight: float = 0.5
    # an artifact whose clinical-context offset (mlcore.clinical), fixed, is added to the logits inside
    # the training loss: the network then learns what age, sex and site do not already say (the
    # exported network and its own offset, refitted after training, are unchanged in form)
    offset_in_loss_from: str = ""
    # weight of a malignant-vs-benign cross-entropy added to the loss (training.model.set_loss): 0 off
    malignancy_weight: float = 0.0
    # the network: "scratch" (training.model.build_model: the residual CNN above, random init) or
    # "mobilenet_v2" (Keras MobileNetV2 starting from the bundled ImageNet weights,
    # training.backbone; width/stages/stem_stride do not apply)
    backbone: str = "mobilenet_v2"
    freeze_blocks: int = 6  # mobilenet_v2: keep its stem and blocks 0..k-1 frozen

    def __post_init__(self) -> None:
        from mlcore.framing import FRAMINGS

        if self.framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {FRAMINGS}, not {self.framing!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, not {self.backbone!r}")
        from mlcore.keras_model import TTA_MODES

        if self.tta not in (*TTA_MODES, TTA_AUTO):
            raise ValueError(f"tta must be one of {(*TTA_MODES, TTA_AUTO)}, not {self.tta!r}")
        if self.distill_tta not in TTA_MODES:
            raise ValueError(f"distill_tta must be one of {TTA_MODES}, not {self.distill_tta!r}")
        if not 0.0 < self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in (0, 1], not {self.distill_weight}")
        if not 0.0 <= self.malignancy_weight <= 10.0:
            raise ValueError(f"malignancy_weight must be in [0, 10], not {self.malignancy_weight}")

    @property
    def effective_split_seed(self) -> int:
        """The seed of the lesion split."""
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def progressive(self) -> bool:
        """Whether training uses progressive resizing (a start size below the full size)."""
        return 0 < self.progressive_min_size < self.image_size

    @property
    def last_conv_layer(self) -> str:
        """The layer Grad-CAM reads (the last convolutional block's output)."""
        from .model import LAST_CONV, MOBILENET_LAST_CONV

        return MOBILENET_LAST_CONV if self.backbone == "mobilenet_v2" else LAST_CONV

    def build_model(self, *, any_size: bool = False):
        """The Keras model this configuration describes (under the current dtype policy);
        ``any_size`` accepts every square input size (for progressive resizing)."""
        from mlcore.labels import NUM_CLASSES
        from .model import build_mobilenet_v2, build_model

        if self.backbone == "mobilenet_v2":
            return build_mobilenet_v2(None if any_size else self.image_size, NUM_CLASSES, self.dropout,
                                      seed=self.seed, colour_constancy=self.colour_constancy,
                                      freeze_blocks=self.freeze_blocks)
        return build_model(None if any_size else self.image_size, NUM_CLASSES, self.width, self.stages, self.dropout,
                           seed=self.seed, stem_stride=self.stem_stride,
                           colour_constancy=self.colour_constancy)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stages"] = list(self.stages)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        # artifacts from before these options: no colour constancy, no device augmentation
        d.setdefault("colour_constancy", "none")
        d.setdefault("aug_device", 0.0)
        d.setdefault("aug_zoom_out", 0.0)
        d.setdefault("aug_hair", 0.0)
        d.setdefault("framing", "squash")
        d.setdefault("backbone", "scratch")
        d.setdefault("freeze_blocks", 0)
        d.setdefault("run_budget_min", 0.0)  # before it existed, only the loop had a budget
        if "stages" in d:
            d["stages"] = tuple(d["stages"])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def fine_tune_config(model_dir: Path, overrides: dict | None = None) -> "TrainConfig":
    """The config that continues the artifact in ``model_dir``: its own settings (its network, its
    preprocessing), then `FINE_TUNE_RECIPE`, then ``overrides``, warm-started from its weights
    (and so on its lesion split: `training.train.warm_start_split`)."""
    from mlcore.artifact import MODEL_FILE, read_card

    own = read_card(Path(model_dir), required=("training",))["training"].get("config")
    if not own:
        raise ValueError(f"{model_dir}: the model card does not record its training settings")
    return TrainConfig.from_dict(own | FINE_TUNE_RECIPE | dict(overrides or {})
                                 | {"pretrained": str(Path(model_dir) / MODEL_FILE)})


def restart_config(model_dir: Path, overrides: dict | None = None) -> "TrainConfig":
    """The config that restarts the artifact in ``model_dir`` the way v3.2 was made: as
    `fine_tune_config`, with `RESTART_RECIPE` (every block, a warm restart) and the artifact's own
    clinical offset held fixed inside the loss, then ``overrides``."""
    return fine_tune_config(model_dir, RESTART_RECIPE | {"offset_in_loss_from": str(model_dir)}
                            | dict(overrides or {}))
