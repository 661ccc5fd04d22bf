"""Routes of ``/api/v1/``: the resources, the OpenAPI schema and its docs (assets served locally)."""
from django.contrib.auth.decorators import login_not_required
from django.urls import path
from django.views.decorators.cache import cache_control
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from api import views
from api.errors import NO_STORE

app_name = "api"

router = DefaultRouter()
router.register("patients", views.PatientViewSet, basename="patient")
router.register("cases", views.CaseViewSet, basename="case")
router.register("lesions", views.LesionViewSet, basename="lesion")
router.register("images", views.ImageViewSet, basename="image")
router.register("predictions", views.PredictionViewSet, basename="prediction")
router.register("reviews", views.ReviewViewSet, basename="review")
router.register("outcomes", views.OutcomeViewSet, basename="outcome")
router.register("queue", views.QueueViewSet, basename="queue")
router.register("models", views.ModelVersionViewSet, basename="model")

urlpatterns = [
    path("me/", views.MeView.as_view(), name="me"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    *router.urls,
]

# The API authenticates its own requests (tokens): the site's login redirect must not answer for it.
# Its answers carry patient data (errors included): never cached, as the pages are not.
for pattern in urlpatterns:
    pattern.callback = login_not_required(cache_control(**NO_STORE)(pattern.callback))
