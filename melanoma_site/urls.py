"""URL routes: the app, Django's auth and admin, and the health endpoint."""
from django.contrib import admin
from django.urls import include, path

from melanoma_site import health

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("health/", health.health, name="health"),
    path("", include("cases.urls")),
]
