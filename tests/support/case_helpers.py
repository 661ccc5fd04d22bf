"""Helpers shared by the cases tests (a plain module: conftest modules can't be imported reliably)."""
from __future__ import annotations

from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from cases.models import Case, Clinic, ClinicMembership, Lesion, Patient
from cases.roles import CLINICIAN, DERMATOLOGIST


def make_staff(world, *codenames: str, name: str = "staff_a", clinic: Clinic | None = None):
    """A staff user (not a superuser) of ``clinic`` (default clinic A) with the given permissions."""
    from django.contrib.auth.models import Permission

    staff = make_user(name, clinic=clinic or world.clinic_a)
    staff.is_staff = True
    staff.save()
    staff.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return staff


def user_change_post(user, **overrides) -> dict:
    """The admin's user change form as posted for ``user``, with ``overrides`` (None leaves a field out)."""
    from django.utils import timezone

    joined = timezone.localtime(user.date_joined)
    data = {"username": user.username, "first_name": user.first_name, "last_name": user.last_name,
            "email": user.email, "is_active": "on", "date_joined_0": joined.date().isoformat(),
            "date_joined_1": joined.strftime("%H:%M:%S"), "last_login_0": "", "last_login_1": "",
            "groups": [g.pk for g in user.groups.all()]}
    return {k: v for k, v in (data | overrides).items() if v is not None}


def stored_files(root: Path) -> list[str]:
    """Relative paths of every file under the media root."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def make_user(username: str, *, role: str | None = None, clinic: Clinic | None = None, admin: bool = False):
    user = get_user_model().objects.create_user(username=username, password="pw-for-tests-123",
                                                first_name=username.title())
    if role:
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    if admin:
        user.is_staff = user.is_superuser = True
        user.save()
    if clinic:
        ClinicMembership.objects.create(user=user, clinic=clinic)
    return user


class World:
    """Two clinics with one patient/case/lesion each, and a user of every kind."""

    def __init__(self) -> None:
        self.clinic_a = Clinic.objects.create(name="Clinic A")
        self.clinic_b = Clinic.objects.create(name="Clinic B")
        self.clin_a = make_user("clin_a", role=CLINICIAN, clinic=self.clinic_a)
        self.clin_b = make_user("clin_b", role=CLINICIAN, clinic=self.clinic_b)
        self.derm = make_user("derm", role=DERMATOLOGIST)
        self.derm2 = make_user("derm2", role=DERMATOLOGIST)
        self.norole = make_user("norole")
        self.admin = make_user("boss", admin=True)
        self.patient_a = Patient.objects.create(clinic=self.clinic_a, identifier="PA-1", birth_year=1970,
                                                sex="female", created_by=self.clin_a)
        self.patient_b = Patient.objects.create(clinic=self.clinic_b, identifier="PB-1", birth_year=1980,
                                                sex="male", created_by=self.clin_b)
        self.case_a = Case.objects.create(patient=self.patient_a, referring_clinician=self.clin_a,
                                          clinical_question="Changing mole?")
        self.case_b = Case.objects.create(patient=self.patient_b, referring_clinician=self.clin_b,
                                          clinical_question="New lesion?")
        self.lesion_a = Lesion.objects.create(case=self.case_a, anatomic_site="posterior torso")
        self.lesion_b = Lesion.objects.create(case=self.case_b, anatomic_site="head/neck")


def make_image(world, sha="a" * 64, lesion=None):
    """A stored image (a real PNG) on clinic A's lesion unless another lesion is given."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from cases.models import LesionImage
    from tests.support.imagegen import png

    name = default_storage.save("lesion-images/test.png", ContentFile(png()))
    return LesionImage.objects.create(lesion=lesion or world.lesion_a, file=name, sha256=sha, size_bytes=10,
                                      width=96, height=64, uploaded_by=world.clin_a)


def score_image(image, version, *, assessable: bool = True, status: str = "done"):
    """A prediction of ``image`` by ``version``: finished (with scores) unless ``status`` says otherwise."""
    from django.utils import timezone

    from cases.models import Prediction

    done = status == Prediction.Status.DONE
    return Prediction.objects.create(image=image, model_version=version, status=status, assessable=assessable,
                                     melanoma_probability=0.3 if done else None, malignancy_score=0.3 if done else None,
                                     finished_at=timezone.now() if done else None,
                                     started_at=timezone.now() if status == Prediction.Status.RUNNING else None)
