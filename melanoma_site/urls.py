"""URL routes: the app, Django's auth and admin, and the health endpoint."""
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from melanoma_site import health

urlpatterns = [
    path("admin/", admin.site.urls),
    # Only these auth views: no self-service password reset (accounts are issued by an admin,
    # and an unthrottled reset form would be a second, unprotected way in).
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/password_change/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("accounts/password_change/done/", auth_views.PasswordChangeDoneView.as_view(),
         name="password_change_done"),
    path("health/", health.health, name="health"),
    path("health/live", health.live, name="health_live"),
    path("api/v1/", include("api.urls")),
    path("", include("cases.urls")),
]

handler400 = "api.errors.bad_request"
handler404 = "api.errors.not_found"
handler500 = "api.errors.server_error"
