"""Web views for clinicians and dermatologists."""
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def home(request: HttpRequest) -> HttpResponse:
    """Landing page after login."""
    return render(request, "cases/home.html")
