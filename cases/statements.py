"""The fixed texts every output carries: the intended-use statement and the data attribution.

One place for them, so that the web pages (through the ``site`` context processor) and the PDF
report (cases.report) can never drift apart. Plain text: templates escape it, the report
escapes it for ReportLab's markup.
"""
from __future__ import annotations

from django.conf import settings

# The footer of every page: a short lead, then the statement itself.
INTENDED_USE_LEAD = "Decision support only."
INTENDED_USE_TEMPLATE = (
    "{site_name} gives clinicians a second opinion on dermoscopic images. It does not diagnose; "
    "a clinician makes every diagnostic and management decision."
)

# The notice above a score (after "Intended use:"), where the scores themselves are the point.
RESULT_INTENDED_USE = (
    "decision support for clinicians. These scores are not a diagnosis; "
    "a clinician makes every diagnostic and management decision."
)

DATA_ATTRIBUTION = (
    "Model trained on images from the ISIC Archive (International Skin Imaging Collaboration; "
    "CC-0 / CC BY-NC 4.0) and HAM10000 (Tschandl, Rosendahl & Kittler, Sci. Data 5, 180161 (2018); "
    "ViDIR Group, Medical University of Vienna; CC BY-NC 4.0). Tested on another hospital's images: "
    "the PH2 database (Mendonça et al., IEEE EMBC 2013; Hospital Pedro Hispano, Matosinhos; "
    "research and education use). The network starts from Keras's ImageNet MobileNetV2 weights "
    "(Keras Applications, Apache-2.0; ImageNet, Deng et al. 2009), as bundled in the nsfwjs 4.3.0 "
    "npm package (MIT). Non-commercial use."
)

# Beside every "Not flagged" result (the result pages and the report), and among the known limits.
BELOW_THRESHOLD = "A score below the threshold does not rule out melanoma or another malignancy."

# What the shipped model's validation could not cover (README, "Known limits"); a model card
# that lists its own "limitations" replaces these in the report and on the result page. The
# figures are the shipped model's (classifier/shipped_model/metrics.json: "external" PH2 and the
# held-out test's subgroups by source and site); tests/cases/test_result_honesty.py and
# tests/cases/test_result_caveats.py check them against that file.
MODEL_LIMITS = (
    "Trained and tested mostly on light-skinned patients from two public collections: darker skin "
    "types (Fitzpatrick V-VI) are barely represented, so its accuracy for them is unknown.",
    "Images from a different dermatoscope or clinic are often out of domain for it: on the PH2 "
    "hospital's 200 images it could not assess 109 (54.5 %), 26 of the 40 melanomas among them. "
    "Every image it cannot assess goes to a dermatologist, so there 80 % of the nevi were sent for "
    "review (flagged or could not assess; specificity 0.20), as were 95 % of the melanomas.",
    "In its training data a collection's image style stands in for part of the diagnosis (the "
    "ISIC-archive copies are about half melanomas, the HAM10000 images mostly not): on the ISIC-archive "
    "benign held-out test images its melanoma specificity is only 0.16, so most of them are flagged.",
    "Lesions on the palms or soles (acral) and at oral or genital sites were hardly represented in its "
    "data (2 and 6 of the 1,596 held-out test images): its scores for these sites are not reliable.",
    "Not validated for children: patients under 18 are outside the population it was validated on.",
    "Validated for dermoscopic images only: clinical (close-up) photos are not scored by the model; they are "
    "stored and the lesion goes to a dermatologist.",
    BELOW_THRESHOLD,
)

# Under the melanoma probability (result page, case page, report). ``share``: the melanomas' share of
# the version's validation images, where its card records their counts (cases.presentation.calibration_note).
CALIBRATION_NOTE = (
    "The melanoma probability is calibrated on dermoscopic images from public collections (ISIC Archive, "
    "HAM10000) with {share} melanomas, far more than in a clinic: it ranks the lesion's risk; it is not "
    "this patient's chance of having melanoma."
)
CALIBRATION_NOTE_SHORT = ("Calibrated on public collections with {share} melanomas: ranks risk, "
                          "not this patient's chance.")
CALIBRATION_SHARE_UNKNOWN = "many"  # no recorded counts: no number is made up


def intended_use(site_name: str | None = None) -> str:
    """The intended-use statement, naming the site."""
    return INTENDED_USE_TEMPLATE.format(site_name=site_name or settings.SITE_NAME)
