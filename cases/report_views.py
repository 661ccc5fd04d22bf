"""The case's second-opinion report as a PDF download (cases.report renders it).

Same access rule as the case page (cases.access.visible_cases: anything else is 404), never
cached, and audited as a download: the PDF carries the patient's images and results.
"""
from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET

from audit import log as audit_log
from cases import access
from cases.report import build_case_report

PRIVATE = "private, no-store"


def report_filename(case_pk: int) -> str:
    return f"secondlook-case-{case_pk}.pdf"


@require_GET
def case_report(request: HttpRequest, pk: int) -> HttpResponse:
    """The PDF, inline (the browser shows it; saving keeps the file name)."""
    case = get_object_or_404(access.visible_cases(request.user), pk=pk)
    pdf = build_case_report(case, generated_by=request.user)
    response = HttpResponse(pdf, content_type="application/pdf")
    response["Content-Disposition"] = f'inline; filename="{report_filename(case.pk)}"'
    response["Cache-Control"] = PRIVATE
    # audited once the report exists: a failed render has handed nothing out
    audit_log.record(action="download", obj=case, request=request, new={"format": "pdf"})
    return response
