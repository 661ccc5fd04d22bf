"""FHIR export of one case: a pure builder, ``case_bundle(case, base_url=..., files_url=...)`` → a Bundle as a dict.

FHIR version: the models of ``fhir.resources.R4B`` (FHIR 4.3.0). fhir.resources 8.x ships R5 at
the top level, R4B and STU3, but no separate 4.0.1 package; R4B is the R4-compatible release and
still has ``Media`` (R5 dropped it), and every element used here has the same name, type and
cardinality in R4 4.0.1. Building each resource with the model classes validates it as it is made.

The Bundle (type ``collection``) holds:

- ``Organization``: the clinic (the data controller; its name identifies no patient).
- ``Patient``: pseudonymous only — the clinic's identifier, gender and birth *year* (FHIR's
  ``birthDate`` allows ``YYYY``), managed by the Organization. No name, no user of the app.
- ``ServiceRequest``: the case (a referral for a second opinion); ``reasonCode.text`` is the
  clinical question. The case's free-text notes are not exported.
- ``BodyStructure`` per lesion: ``location`` coded with the ISIC site (a local code system) and
  SNOMED CT where one concept means the same region (``SITE_SNOMED``); "unknown" is text only.
- ``Media`` per image: the stored PNG by the API's URL (``/api/v1/images/{id}/file/``, fetched with
  an API token; never the client's file name, which may name the patient); ``createdDateTime``
  the date it was taken where the file said so, else its upload (also ``issued``). A newest prediction that is not done adds a note instead of Observations.
- ``Device`` per model version used: the CNN, its version, "decision support; not a diagnosis".
- ``Observation`` ×3 per image whose newest prediction is done (as the case page shows it):
  melanoma probability, malignancy score (``valueQuantity``, UCUM ``1``, the flagging threshold
  as ``referenceRange.high``) and the AI flag (``valueBoolean``, reasons in ``note``). There are no
  LOINC codes for these; they use the local CodeSystem ``{base_url}/fhir/CodeSystem/secondlook``.
  ``device`` → Device, ``derivedFrom`` → Media, ``focus`` → the lesion's BodyStructure.
  When the model could not assess the image, the app does not show its scores, so neither does
  the export: the two scores carry ``dataAbsentReason`` and a note saying why, and the flag is
  true with that reason. Status stays ``final``: the model's judgement is complete, not pending.
- ``Practitioner`` per reviewer (display name only) and ``DiagnosticReport`` per review:
  conclusion text, ``conclusionCode`` for the final diagnosis (SNOMED CT for melanoma and basal
  cell carcinoma, a local code for every diagnosis), ``result`` → the Observations and ``media``
  → the Media the review saw (image uploaded and scored before the review was signed).
- ``DiagnosticReport`` for a lesion's current histopathology result, and the ``Specimen`` it was
  made on: R4 DiagnosticReport has no ``focus`` or ``bodySite``, so the report's ``specimen`` →
  Specimen, whose ``collection.bodySite`` is the lesion's site with the core ``bodySite``
  extension → the lesion's BodyStructure. The conclusion names the lesion ("Lesion L2").

Every entry's ``fullUrl`` is ``urn:uuid:`` + a uuid5 of the base URL and the object (for example
``patient/12``): stable across exports, distinct between deployments, and what references use. The
base URL (ids, identifier and code systems) is the deployment's configured one
(``settings.SECONDLOOK_FHIR_BASE_URL``), never the request's host, which names only where the
image files are fetched (``files_url``): one case exported through two host names is one set of ids.
An amended review or a corrected histopathology result keeps the id of the report it amends or
corrects (the first of its chain): FHIR amends a report in place, so a receiver replaces it.
Audit logging and access checks belong to the view that serves this.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from django.db.models import Prefetch
from django.urls import reverse
from django.utils import timezone
from fhir.resources.R4B.bodystructure import BodyStructure
from fhir.resources.R4B.bundle import Bundle, BundleEntry
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.media import Media
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.patient import Patient as FhirPatient
from fhir.resources.R4B.practitioner import Practitioner
from fhir.resources.R4B.resource import Resource
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.specimen import Specimen

from cases.models import DIAGNOSIS_CHOICES, Case, Lesion, LesionImage, Patient, Prediction, Review
from cases.outcomes import current_outcome
from cases.scoring import CANNOT_ASSESS
from classifier.models import ModelVersion

FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.3.0"  # fhir.resources.R4B

# Fixed namespace of the export's uuid5 ids: changing it changes every fullUrl ever exported.
EXPORT_NAMESPACE = uuid.UUID("6f1c2a4e-3b7d-5e9a-8c0f-2d4b6a8e1f35")

SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
MEDIA_TYPE = "http://terminology.hl7.org/CodeSystem/media-type"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
# core extension (R4 and R4B): Reference(BodyStructure) from an element that only has a coded site
BODY_SITE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/bodySite"
DEVICE_NAME = "AI melanoma risk CNN (SecondLook)"

# ISIC anatomic site group → (SNOMED CT code, display), or None where no single SNOMED concept
# means that group. The "skin of …" concepts are those of DICOM CID 4029 (Dermatology Anatomic
# Site); head/neck has none there, so it takes the region concept. A CodeableConcept's codings
# must all mean the same thing, so a union such as palms/soles gets no SNOMED half of itself,
# and lateral torso is not coded as "flank", which is only part of it; they keep the ISIC code.
SITE_SNOMED: dict[str, tuple[str, str] | None] = {
    Lesion.Site.ANTERIOR_TORSO: ("181491009", "Skin of anterior trunk"),
    Lesion.Site.HEAD_NECK: ("774007", "Structure of head and/or neck"),
    Lesion.Site.LATERAL_TORSO: None,
    Lesion.Site.LOWER_EXTREMITY: ("371304004", "Skin of lower extremity"),
    Lesion.Site.ORAL_GENITAL: None,
    Lesion.Site.PALMS_SOLES: None,
    Lesion.Site.POSTERIOR_TORSO: ("66643007", "Skin of back"),
    Lesion.Site.UPPER_EXTREMITY: ("371311000", "Skin of upper extremity"),
}

# Final diagnosis → SNOMED CT disorder, only where the concept is certain; all diagnoses also get
# the app's own code, so a receiver can still tell them apart. A diagnosis is a disorder, never the
# morphologic abnormality (372244006 "Malignant melanoma" is the morphology, not the diagnosis).
DIAGNOSIS_SNOMED: dict[str, tuple[str, str]] = {
    "melanoma": ("372130007", "Malignant melanoma of skin"),
    "basal cell carcinoma": ("254701007", "Basal cell carcinoma of skin"),
}
DIAGNOSIS_LABELS = dict(DIAGNOSIS_CHOICES)

GENDER = {Patient.Sex.FEMALE: "female", Patient.Sex.MALE: "male", Patient.Sex.OTHER: "other",
          Patient.Sex.UNKNOWN: "unknown"}
CASE_STATUS = {Case.Status.OPEN: "active", Case.Status.IN_REVIEW: "active", Case.Status.REVIEWED: "completed",
               Case.Status.CLOSED: "completed"}
NOT_DONE_NOTE = {
    Prediction.Status.PENDING: "AI scoring: waiting to be scored; no result yet.",
    Prediction.Status.RUNNING: "AI scoring: in progress; no result yet.",
    # the error text stays out: it may quote server paths
    Prediction.Status.FAILED: "AI scoring failed; no result.",
}
RESCORE_STATE = {Prediction.Status.PENDING: "waiting", Prediction.Status.RUNNING: "in progress"}
SCORES = (
    # (code, display, prediction field, model version threshold field)
    ("melanoma-probability", "Melanoma probability (AI)", "melanoma_probability", "melanoma_threshold"),
    ("malignancy-score", "Malignancy score (AI)", "malignancy_score", "malignancy_threshold"),
)
FLAG_CODE, FLAG_DISPLAY = "ai-flag", "Flagged for dermatologist review (AI)"


@dataclass(frozen=True)
class Urls:
    """The deployment's URLs: code systems, identifier systems and ids of the exported objects
    (``base``), and where the image files are fetched (``files``; ``base`` when not given)."""

    base: str
    files: str = ""

    def file(self, image_pk: int) -> str:
        """The API's URL of an image's stored PNG."""
        return (self.files or self.base) + reverse("api:image-file", args=[image_pk])

    def urn(self, kind: str, pk: Any) -> str:
        """Stable ``urn:uuid`` of one object (the base URL keeps two deployments' ids apart)."""
        return f"urn:uuid:{uuid.uuid5(EXPORT_NAMESPACE, f'{self.base}/{kind}/{pk}')}"

    def system(self, name: str) -> str:
        return f"{self.base}/fhir/identifier/{name}"

    def code_system(self, name: str) -> str:
        return f"{self.base}/fhir/CodeSystem/{name}"


def _resource_id(full_url: str) -> str:
    return full_url.removeprefix("urn:uuid:")


def _ref(full_url: str, display: str | None = None) -> dict:
    return {"reference": full_url, **({"display": display} if display else {})}


def _when(value: datetime) -> datetime:
    """Timezone-aware (FHIR dateTime with a time needs an offset; instant requires one)."""
    return value if timezone.is_aware(value) else timezone.make_aware(value)


def _entry(full_url: str, resource: Resource) -> BundleEntry:
    return BundleEntry(fullUrl=full_url, resource=resource)


# --- Who and where -----------------------------------------------------------------------------

def organization(case: Case, urls: Urls) -> BundleEntry:
    clinic = case.patient.clinic
    url = urls.urn("clinic", clinic.pk)
    return _entry(url, Organization(id=_resource_id(url), name=clinic.name,
                                    identifier=[{"system": urls.system("clinic"), "value": str(clinic.pk)}]))


def patient(case: Case, urls: Urls) -> BundleEntry:
    """Pseudonymous: the clinic's identifier, gender, birth year; nothing else about the person."""
    person = case.patient
    url = urls.urn("patient", person.pk)
    return _entry(url, FhirPatient(
        id=_resource_id(url),
        identifier=[{"system": urls.system(f"clinic/{person.clinic_id}/patient"), "value": person.identifier}],
        gender=GENDER.get(person.sex, "unknown"),
        birthDate=f"{person.birth_year:04d}",
        managingOrganization=_ref(urls.urn("clinic", person.clinic_id), person.clinic.name),
    ))


def service_request(case: Case, urls: Urls) -> BundleEntry:
    """The case as the referral it is: who asked (the clinic), about whom, and the question."""
    url = urls.urn("case", case.pk)
    return _entry(url, ServiceRequest(
        id=_resource_id(url),
        identifier=[{"system": urls.system("case"), "value": str(case.pk)}],
        status=CASE_STATUS.get(case.status, "unknown"),
        intent="order",
        code={"text": "Dermatology second opinion on dermoscopic images, with AI decision support"},
        subject=_ref(urls.urn("patient", case.patient_id)),
        requester=_ref(urls.urn("clinic", case.patient.clinic_id), case.patient.clinic.name),
        authoredOn=_when(case.created_at),
        reasonCode=[{"text": case.clinical_question}],
    ))


def site_concept(site: str, urls: Urls) -> dict:
    """The ISIC site as a CodeableConcept: ISIC code and SNOMED CT where equivalent; unknown: text."""
    label = Lesion.Site(site).label if site in Lesion.Site.values else site
    if site == Lesion.Site.UNKNOWN or site not in SITE_SNOMED:
        return {"text": "Unknown site" if site == Lesion.Site.UNKNOWN else label}
    codings = [{"system": urls.code_system("isic-anatomic-site"), "code": site, "display": label}]
    if (snomed := SITE_SNOMED[site]) is not None:
        codings.append({"system": SNOMED, "code": snomed[0], "display": snomed[1]})
    return {"coding": codings, "text": label}


def body_structure(lesion: Lesion, case: Case, urls: Urls) -> BundleEntry:
    url = urls.urn("lesion", lesion.pk)
    return _entry(url, BodyStructure(
        id=_resource_id(url),
        identifier=[{"system": urls.system("lesion"), "value": str(lesion.pk)}],
        active=True,
        location=site_concept(lesion.anatomic_site, urls),
        # free text as the clinician wrote it: a description, not a coded morphology
        description=lesion.description or None,
        patient=_ref(urls.urn("patient", case.patient_id)),
    ))


def media(image: LesionImage, lesion: Lesion, case: Case, latest: Prediction | None, urls: Urls) -> BundleEntry:
    url = urls.urn("image", image.pk)
    note = None
    if latest is not None and latest.status != Prediction.Status.DONE:
        note = [{"text": NOT_DONE_NOTE.get(latest.status, "AI scoring: no result.")}]
    pending = image.rescore_in_progress()
    if pending is not None:  # the exported result stays in force until the re-score finishes
        note = [{"text": f"AI re-scoring with model version {pending.model_version.version}: "
                         f"{RESCORE_STATE.get(pending.status, 'failed')}; the result exported is the one in force."}]
    return _entry(url, Media(
        id=_resource_id(url),
        identifier=[{"system": urls.system("image"), "value": str(image.pk)}],
        basedOn=[_ref(urls.urn("case", case.pk))],
        status="completed",
        type={"coding": [{"system": MEDIA_TYPE, "code": "image", "display": "Image"}]},
        modality={"text": "Dermoscopy" if image.kind == LesionImage.Kind.DERMOSCOPIC else "Clinical photograph"},
        subject=_ref(urls.urn("patient", case.patient_id)),
        # taken on the date the file stated (DICOM import), else known only as of its upload
        createdDateTime=getattr(image, "acquired_on", None) or _when(image.uploaded_at),
        issued=_when(image.uploaded_at),
        bodySite=site_concept(lesion.anatomic_site, urls),
        width=image.width,
        height=image.height,
        # the API's route: a receiving system holds a token, not a browser session
        content={"contentType": "image/png", "url": urls.file(image.pk),
                 "size": image.size_bytes, "creation": _when(image.uploaded_at)},
        note=note,
    ))


def device(version: ModelVersion, urls: Urls) -> BundleEntry:
    url = urls.urn("model-version", version.pk)
    return _entry(url, Device(
        id=_resource_id(url),
        identifier=[{"system": urls.system("model-version"), "value": version.version}],
        deviceName=[{"name": DEVICE_NAME, "type": "user-friendly-name"}],
        type={"text": "melanoma risk CNN"},
        version=[{"value": version.version}],
        note=[{"text": "Decision support; not a diagnosis."}],
    ))


def practitioner(user, urls: Urls) -> BundleEntry:
    """A reviewer by display name; the login name never leaves the app."""
    url = urls.urn("user", user.pk)
    return _entry(url, Practitioner(id=_resource_id(url), name=[{"text": display_name(user)}],
                                    identifier=[{"system": urls.system("user"), "value": str(user.pk)}]))


def display_name(user) -> str:
    return user.get_full_name().strip() or "SecondLook dermatologist"


# --- AI results --------------------------------------------------------------------------------

def _score_observation(prediction: Prediction, score: tuple[str, str, str, str], common: dict,
                       urls: Urls) -> Observation:
    code, display, field, threshold_field = score
    threshold = getattr(prediction.model_version, threshold_field)
    concept = {"coding": [{"system": urls.code_system("secondlook"), "code": code, "display": display}],
               "text": display}
    if not prediction.assessable:
        # the app hides these scores (the model is unreliable for this image); so does the export
        return Observation(code=concept, dataAbsentReason={
            "coding": [{"system": DATA_ABSENT_REASON, "code": "unknown", "display": "Unknown"}],
            "text": CANNOT_ASSESS}, **common)
    reference_range = None
    if threshold is not None:
        reference_range = [{"high": {"value": threshold, "unit": "probability", "system": UCUM, "code": "1"},
                            "text": f"Flagged at or above {threshold:g} (threshold of model version "
                                    f"{prediction.model_version.version} at export)"}]
    return Observation(code=concept, referenceRange=reference_range,
                       valueQuantity={"value": getattr(prediction, field), "unit": "probability",
                                      "system": UCUM, "code": "1"}, **common)


def _flag_observation(prediction: Prediction, common: dict, urls: Urls) -> Observation:
    concept = {"coding": [{"system": urls.code_system("secondlook"), "code": FLAG_CODE, "display": FLAG_DISPLAY}],
               "text": FLAG_DISPLAY}
    texts = [n["text"] for n in common.get("note") or []] + list(prediction.flag_reasons)
    # a not-assessable flag's reason repeats the common note: say it once
    notes = [{"text": text} for text in dict.fromkeys(texts)]
    return Observation(code=concept, valueBoolean=prediction.flagged, **{**common, "note": notes or None})


def observations(prediction: Prediction, lesion: Lesion, case: Case, urls: Urls) -> list[BundleEntry]:
    """Three Observations of a done prediction: the two scores and the flag."""
    version = prediction.model_version
    common: dict = {
        "status": "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "imaging", "display": "Imaging"}]}],
        "basedOn": [_ref(urls.urn("case", case.pk))],
        "subject": _ref(urls.urn("patient", case.patient_id)),
        "focus": [_ref(urls.urn("lesion", lesion.pk))],
        "effectiveDateTime": _when(prediction.finished_at),
        "issued": _when(prediction.finished_at),
        "bodySite": site_concept(lesion.anatomic_site, urls),
        "method": {"text": "Convolutional neural network on the image (decision support, not a diagnosis)"},
        "device": _ref(urls.urn("model-version", version.pk), f"{DEVICE_NAME} {version.version}"),
        "derivedFrom": [_ref(urls.urn("image", prediction.image_id))],
    }
    if not prediction.assessable:
        reasons = "; ".join(prediction.assessment_notes) or "no reason recorded"
        common["note"] = [{"text": f"{CANNOT_ASSESS}: {reasons}"}]
    made = [(score[0], _score_observation(prediction, score, common, urls)) for score in SCORES]
    made.append((FLAG_CODE, _flag_observation(prediction, common, urls)))
    entries = []
    for code, observation in made:
        url = urls.urn(f"prediction/{prediction.pk}", code)
        observation.id = _resource_id(url)
        entries.append(_entry(url, observation))
    return entries


# --- The dermatologist's review ----------------------------------------------------------------

def diagnosis_concept(diagnosis: str, urls: Urls) -> dict:
    label = DIAGNOSIS_LABELS.get(diagnosis, diagnosis)
    codings = [{"system": urls.code_system("diagnosis"), "code": diagnosis, "display": label}]
    if (snomed := DIAGNOSIS_SNOMED.get(diagnosis)) is not None:
        codings.append({"system": SNOMED, "code": snomed[0], "display": snomed[1]})
    return {"coding": codings, "text": label}


def conclusion(review: Review) -> str:
    parts = [
        f"Agreement with the AI: {review.get_agreement_display()}",
        f"Final diagnosis: {DIAGNOSIS_LABELS.get(review.final_diagnosis, review.final_diagnosis)}",
        f"Management: {review.get_management_display()}",
    ]
    if review.notes.strip():
        parts.append(f"Notes: {review.notes.strip()}")
    if review.amends_id:
        parts.append(f"Amends the review of {_when(review.amends.created_at):%Y-%m-%d %H:%M %Z}: {review.amendment_reason}")
    # one statement a line: the notes are free text and may hold any punctuation
    return "\n".join(parts)


def seen_by(review: Review, image: LesionImage, prediction: Prediction | None) -> tuple[bool, bool]:
    """(the review saw the image, and its exported score): both existed when it was signed. A
    later upload or re-score must not appear as part of what the dermatologist reported on."""
    image_seen = image.uploaded_at <= review.created_at
    score_seen = (image_seen and prediction is not None and prediction.status == Prediction.Status.DONE
                  and prediction.finished_at is not None and prediction.finished_at <= review.created_at)
    return image_seen, score_seen


def first_review(review: Review, lesion: Lesion) -> Review:
    """The review an amendment chain began with: its report is the one amended (FHIR amends a
    report in place, so the amended report keeps the first one's id and a receiver replaces it)."""
    by_pk = {r.pk: r for r in lesion.reviews.all()}
    while review.amends_id in by_pk:
        review = by_pk[review.amends_id]
    return review


def diagnostic_report(review: Review, lesion: Lesion, case: Case, latest: dict[int, Prediction | None],
                      urls: Urls) -> BundleEntry:
    first = first_review(review, lesion)
    url = urls.urn("review", first.pk)
    reviewer = _ref(urls.urn("user", review.reviewer_id), display_name(review.reviewer))
    media_links, results = [], []
    for image in lesion.images.all():
        image_seen, score_seen = seen_by(review, image, latest[image.pk])
        if image_seen:
            media_links.append({"link": _ref(urls.urn("image", image.pk))})
        if score_seen:
            results += [_ref(urls.urn(f"prediction/{latest[image.pk].pk}", code))
                        for code in (*(s[0] for s in SCORES), FLAG_CODE)]
    return _entry(url, DiagnosticReport(
        id=_resource_id(url),
        identifier=[{"system": urls.system("review"), "value": str(pk)} for pk in dict.fromkeys((first.pk, review.pk))],
        basedOn=[_ref(urls.urn("case", case.pk))],
        status="amended" if review.amends_id else "final",
        code={"text": "Dermatologist review of dermoscopy"},
        subject=_ref(urls.urn("patient", case.patient_id)),
        effectiveDateTime=_when(review.created_at),
        issued=_when(review.created_at),
        performer=[reviewer],
        resultsInterpreter=[reviewer],
        result=results or None,
        media=media_links or None,
        conclusion=conclusion(review),
        conclusionCode=[diagnosis_concept(review.final_diagnosis, urls)],
    ))


def lesion_label(lesion: Lesion) -> str:
    """"Lesion L2", the patient's number for it as the pages show it ("Lesion 17", its id, if it has none)."""
    tracked = lesion.tracked if lesion.tracked_id else None
    return f"Lesion {tracked.label}" if tracked is not None else f"Lesion {lesion.pk}"


def first_outcome(outcome) -> Any:
    """The result a chain of corrections began with: a correction is the same report corrected
    (FHIR ``corrected`` keeps the resource's id) on the same tissue."""
    while outcome.supersedes_id is not None:
        outcome = outcome.supersedes
    return outcome


def specimen(outcome, lesion: Lesion, case: Case, urls: Urls) -> BundleEntry:
    """The tissue the histopathology result was made on, taken from the lesion: its coded site,
    and (R4 ``bodySite`` extension) a reference to the lesion's BodyStructure."""
    url = urls.urn(f"outcome/{first_outcome(outcome).pk}", "specimen")
    site = {**site_concept(lesion.anatomic_site, urls),
            "extension": [{"url": BODY_SITE_EXTENSION,
                           "valueReference": _ref(urls.urn("lesion", lesion.pk), lesion_label(lesion))}]}
    return _entry(url, Specimen(
        id=_resource_id(url),
        type={"text": "Tissue from the excision or biopsy of a skin lesion"},
        subject=_ref(urls.urn("patient", case.patient_id)),
        collection={"bodySite": site},
    ))


def pathology_report(outcome, lesion: Lesion, case: Case, urls: Urls) -> BundleEntry:
    """The lesion's current histopathology result, as entered by the clinic (its lab report id
    kept), on the lesion's ``specimen`` (which references the lesion's BodyStructure)."""
    first = first_outcome(outcome)
    url = urls.urn("outcome", first.pk)
    label = lesion_label(lesion)
    return _entry(url, DiagnosticReport(
        id=_resource_id(url),
        # the lab's report id is unique only within the clinic (its lab), as the patient's is
        identifier=[{"system": urls.system(f"clinic/{case.patient.clinic_id}/histopathology-report"),
                     "value": outcome.report_reference}],
        basedOn=[_ref(urls.urn("case", case.pk))],
        status="final" if outcome.supersedes_id is None else "corrected",
        category=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "SP",
                               "display": "Surgical Pathology"}]}],
        code={"text": "Histopathology of the excised or biopsied lesion"},
        subject=_ref(urls.urn("patient", case.patient_id)),
        effectiveDateTime=outcome.diagnosis_date.isoformat(),
        issued=_when(outcome.entered_at),
        specimen=[_ref(urls.urn(f"outcome/{first.pk}", "specimen"), f"Specimen of {label}")],
        conclusion=(f"{label}: histopathological diagnosis: {outcome.get_diagnosis_display()} (report "
                    f"{outcome.report_reference}, {outcome.diagnosis_date:%Y-%m-%d})."
                    + (f" Corrects an earlier entry: {outcome.reason}" if outcome.supersedes_id else "")),
        conclusionCode=[diagnosis_concept(outcome.diagnosis, urls)],
    ))


# --- The Bundle --------------------------------------------------------------------------------

def _lesions(case: Case) -> list[Lesion]:
    predictions = Prediction.objects.select_related("model_version")  # model ordering: newest first
    return list(case.lesions.select_related("tracked").prefetch_related(
        Prefetch("images", queryset=LesionImage.objects.prefetch_related(Prefetch("predictions", queryset=predictions))),
        Prefetch("reviews", queryset=Review.objects.select_related("reviewer").order_by("created_at", "pk")),
    ))


def _unique(entries: Iterable[BundleEntry]) -> list[BundleEntry]:
    """One entry per fullUrl (a model version or reviewer shared by several lesions)."""
    seen: dict[str, BundleEntry] = {}
    for entry in entries:
        seen.setdefault(entry.fullUrl, entry)
    return list(seen.values())


def case_bundle(case: Case, *, base_url: str, files_url: str | None = None, now: datetime | None = None) -> dict:
    """The case as a FHIR R4B ``collection`` Bundle (a JSON-able dict), validated as it is built.

    ``base_url`` is the deployment's stable absolute root (``settings.SECONDLOOK_FHIR_BASE_URL``), for
    the resource ids and the identifier and code systems; ``files_url`` the root the image files are
    fetched from (the request's, default ``base_url``); ``now`` is the export time (default: now),
    which also makes the Bundle's identifier, so that two exports of the same case differ.
    """
    urls = Urls(base_url.rstrip("/"), (files_url or "").rstrip("/"))
    now = _when(now or timezone.now())
    case = Case.objects.select_related("patient__clinic").get(pk=case.pk)
    lesions = _lesions(case)
    latest = {image.pk: image.current_prediction() for lesion in lesions for image in lesion.images.all()}
    done = {pk: p for pk, p in latest.items() if p is not None and p.status == Prediction.Status.DONE}
    image_lesion = {image.pk: lesion for lesion in lesions for image in lesion.images.all()}

    entries = [organization(case, urls), patient(case, urls), service_request(case, urls)]
    entries += [body_structure(lesion, case, urls) for lesion in lesions]
    entries += [media(image, lesion, case, latest[image.pk], urls) for lesion in lesions for image in lesion.images.all()]
    entries += [device(p.model_version, urls) for p in done.values()]
    for pk, prediction in done.items():
        entries += observations(prediction, image_lesion[pk], case, urls)
    # the current review of each lesion only: an amended one is superseded, and two "final"
    # reports with different diagnoses would leave the receiving system to guess
    amended = {review.amends_id for lesion in lesions for review in lesion.reviews.all() if review.amends_id}
    reviews = [(review, lesion) for lesion in lesions for review in lesion.reviews.all() if review.pk not in amended]
    entries += [practitioner(review.reviewer, urls) for review, _ in reviews]
    entries += [diagnostic_report(review, lesion, case, latest, urls) for review, lesion in reviews]
    outcomes = [(outcome, lesion) for lesion in lesions if (outcome := current_outcome(lesion)) is not None]
    for outcome, lesion in outcomes:
        entries += [specimen(outcome, lesion, case, urls), pathology_report(outcome, lesion, case, urls)]

    bundle_urn = urls.urn("export", f"case/{case.pk}/{now.isoformat()}")
    bundle = Bundle(id=_resource_id(bundle_urn), type="collection", timestamp=now,
                    identifier={"system": "urn:ietf:rfc:3986", "value": bundle_urn},
                    entry=_unique(entries))
    return bundle.model_dump(mode="json")
