"""Settings for SecondLook, read from the environment (12-factor).

Development defaults are safe and need nothing: SQLite under ``var/``, a per-install random
secret key, local media storage. ``DJANGO_ENV=production`` turns on the production checks:
``SECRET_KEY``, ``ALLOWED_HOSTS`` and ``DATABASE_URL`` must then be given.
"""
from __future__ import annotations

import ipaddress
import json
import os
import secrets
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from mlcore import options as inference_options

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("SECONDLOOK_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    """Read a boolean environment variable ("1", "true", "yes", "on" are true)."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    """Read a comma-separated environment variable as a list of non-empty items."""
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def _json_env(name: str) -> dict:
    """A JSON-object environment variable ({} when unset); a bad value stops start-up, naming it."""
    raw = os.environ.get(name, "").strip()
    try:
        value = json.loads(raw) if raw else {}
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ImproperlyConfigured(f"{name} must be a JSON object")
    return value


ENVIRONMENT = os.environ.get("DJANGO_ENV", "development")
PRODUCTION = ENVIRONMENT == "production"
DEBUG = env_bool("DEBUG", default=not PRODUCTION)


def _development_secret_key() -> str:
    """A random key kept in var/ so sessions survive restarts; never used in production."""
    path = VAR_DIR / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        # owner-only: it will hold the SQLite database and uploaded images (an existing one is left as it is)
        VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = secrets.token_urlsafe(64)
        path.write_text(key)
        path.chmod(0o600)
        return key


SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY must be set when DJANGO_ENV=production")
    SECRET_KEY = _development_secret_key()

LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]", "testserver")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "" if PRODUCTION else ",".join(LOCAL_HOSTS))
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must be set when DJANGO_ENV=production")
# DEBUG shows settings, paths and every URL on its error pages: a server reachable by another name
# (a forgotten DJANGO_ENV=production, which turns DEBUG on by default) refuses to start.
if DEBUG and any(host not in LOCAL_HOSTS for host in ALLOWED_HOSTS):
    raise ImproperlyConfigured(
        f"DEBUG is on while ALLOWED_HOSTS names {', '.join(h for h in ALLOWED_HOSTS if h not in LOCAL_HOSTS)}: "
        f"set DJANGO_ENV=production for a deployment (DEBUG=0 for a development server reachable by that name)")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
# The FHIR export's stable identity: its resource ids (uuid5 of this URL and the object) and its
# identifier and code systems derive from it, never from the request's Host or scheme, so a case
# exported through any allowed host gets the same ids. Default: https:// + the first ALLOWED_HOSTS
# name (not a wildcard); else https://secondlook.invalid. Changing it changes every exported id.
SECONDLOOK_FHIR_BASE_URL = (os.environ.get("SECONDLOOK_FHIR_BASE_URL", "").strip() or next(
    (f"https://{host}" for host in ALLOWED_HOSTS if host != "*" and not host.startswith(".")),
    "https://secondlook.invalid")).rstrip("/")
if not SECONDLOOK_FHIR_BASE_URL.startswith(("https://", "http://")):
    raise ImproperlyConfigured("SECONDLOOK_FHIR_BASE_URL must be an absolute http(s) URL "
                               "(https://secondlook.example.org, say)")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "axes",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "audit",
    "cases",
    "classifier",
    "api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "melanoma_site.middleware.RejectNulQueryMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "melanoma_site.urls"
WSGI_APPLICATION = "melanoma_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "melanoma_site.context_processors.site",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
_default_db = f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
_database_url = os.environ.get("DATABASE_URL", "")
if PRODUCTION and not _database_url:
    raise ImproperlyConfigured("DATABASE_URL must be set when DJANGO_ENV=production")
# Persistent connections are checked before reuse: after a database restart each thread's next
# request would otherwise fail on its dead connection.
DATABASES = {"default": dj_database_url.parse(_database_url or _default_db, conn_max_age=60,
                                              conn_health_checks=True)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Workers are separate processes: the test database must be a file they can open too,
    # and WAL lets the web server read while a worker writes.
    # One file per test run, so that two runs in one checkout never share a database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
else:
    DATABASES["default"]["TEST"] = {"NAME": os.environ.get("TEST_DATABASE_NAME", "test_secondlook")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth -----------------------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
# Failed-login throttling: lock a username+IP pair after 5 failures for 15 minutes.
AXES_FAILURE_LIMIT = int(os.environ.get("AXES_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = float(os.environ.get("AXES_COOLOFF_HOURS", "0.25"))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# The app's own reverse proxies (addresses or CIDR networks, comma-separated). Only their
# X-Forwarded-For is believed, by the lockout and the audit trail alike (audit.log.client_ip).
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES")
for _proxy in TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError as _exc:
        raise ImproperlyConfigured(f"TRUSTED_PROXIES: {_proxy!r} is not an address or network") from _exc
AXES_CLIENT_IP_CALLABLE = "audit.log.client_ip"

LANGUAGE_CODE = "en-gb"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- Static and uploaded files ---------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "staticfiles"))
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", VAR_DIR / "media"))
# Images are never served from a public URL: only authenticated views stream them.
MEDIA_URL = None

# Lesion images are patient data: readable by the app's own user only, whatever its umask.
FILE_UPLOAD_PERMISSIONS = 0o600
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
# Files one upload may carry (the form says so clearly); the request parser's own cap sits well
# above, so a few too many get the form's message, not a "bad request" page.
UPLOAD_MAX_FILES = int(os.environ.get("UPLOAD_MAX_FILES", "50"))
DATA_UPLOAD_MAX_NUMBER_FILES = 4 * UPLOAD_MAX_FILES
UPLOAD_MAX_BYTES = int(os.environ.get("UPLOAD_MAX_BYTES", str(20_000_000)))
# File bytes one request may carry, checked while it is read, logged in or not (a larger body is
# refused with a 400 that says so, before anything is saved): a full upload of the largest images.
UPLOAD_MAX_TOTAL_BYTES = int(os.environ.get("UPLOAD_MAX_TOTAL_BYTES", str(UPLOAD_MAX_FILES * UPLOAD_MAX_BYTES)))
FILE_UPLOAD_HANDLERS = [
    "cases.upload_limits.TotalUploadSizeHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]
UPLOAD_MAX_PIXELS = int(os.environ.get("UPLOAD_MAX_PIXELS", str(40_000_000)))
UPLOAD_MIN_SIDE = int(os.environ.get("UPLOAD_MIN_SIDE", "32"))

S3_BUCKET = os.environ.get("S3_BUCKET", "")
if S3_BUCKET:
    _media_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": S3_BUCKET,
            "endpoint_url": os.environ.get("S3_ENDPOINT_URL") or None,
            "region_name": os.environ.get("S3_REGION", "us-east-1"),
            "default_acl": "private",
            "querystring_auth": True,
            "file_overwrite": False,
            "location": os.environ.get("S3_PREFIX", "media"),
        },
    }
else:
    _media_storage = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
# Registered model artifacts are also published to the default storage, by content hash, and
# workers load them from there when the registered path is not on their disk (classifier.artifact_store).
SECONDLOOK_MODELS_IN_STORAGE = env_bool("SECONDLOOK_MODELS_IN_STORAGE", default=bool(S3_BUCKET))
STORAGES = {
    "default": _media_storage,
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        ),
        # collectstatic would otherwise take the uploads' owner-only modes: static files are
        # public, and a proxy running as another user may serve STATIC_ROOT itself
        "OPTIONS": {"file_permissions_mode": 0o644, "directory_permissions_mode": 0o755},
    },
}

# --- Data and models ------------------------------------------------------------------------
SECONDLOOK_DATA_DIR = Path(os.environ.get("SECONDLOOK_DATA_DIR", BASE_DIR.parent / "shared" / "data"))
# How this process serves models (default artifact, engine, precision, TTA override, the cache of
# converted models under VAR_DIR); classifier.apps hands it to the ML core at start-up.
SECONDLOOK_INFERENCE = inference_options.from_environ(os.environ, var_dir=VAR_DIR)
SECONDLOOK_MODEL_DIR = SECONDLOOK_INFERENCE.model_dir
SECONDLOOK_MODELS_ROOT = Path(os.environ.get("SECONDLOOK_MODELS_ROOT", VAR_DIR / "models"))
# Decoded-image cache of training runs started from the admin
SECONDLOOK_CACHE_DIR = Path(os.environ.get("SECONDLOOK_CACHE_DIR", VAR_DIR / "cache"))
# JSON object of TrainConfig fields every admin-started run gets (an ops knob, e.g. '{"epochs": 3}')
SECONDLOOK_TRAINING_OVERRIDES = _json_env("SECONDLOOK_TRAINING_OVERRIDES")
# Images one worker task scores in one forward pass (1 disables batching)
SECONDLOOK_SCORE_BATCH = int(os.environ.get("SECONDLOOK_SCORE_BATCH", "8"))
# Test-only fault injection: seconds a worker sleeps between predicting and storing
SECONDLOOK_FAULT_SCORING_DELAY_S = float(os.environ.get("SECONDLOOK_FAULT_SCORING_DELAY_S", "0") or 0)

# --- Celery (Redis broker) ------------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def _cache_url_beside(broker_url: str) -> str:
    """The broker's Redis with the next database number (``/0`` -> ``/1``), query kept.

    Never the broker's own database: ``cache.clear()`` runs FLUSHDB, which would empty the
    task queues with it. A ``db=`` query wins over the path (as in redis-py), and a ``unix://``
    URL carries its database only there."""
    parts = urlsplit(broker_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = dict(query).get("db")
    if given is None and parts.scheme != "unix":
        given = parts.path.strip("/")
    try:
        broker_db = int(given or 0)
    except ValueError:
        raise ImproperlyConfigured(f"REDIS_URL: {given!r} is not a database number; set CACHE_URL") from None
    cache_db = broker_db + 1 if broker_db < 15 else broker_db - 1  # a default Redis has databases 0-15
    path, query_text = f"/{cache_db}", parts.query
    if "db" in dict(query) or parts.scheme == "unix":
        path = parts.path
        query_text = urlencode([(k, v) for k, v in query if k != "db"] + [("db", str(cache_db))])
    # assembled by hand: urlunsplit() drops the empty host of unix:///path
    return f"{parts.scheme}://{parts.netloc}{path}" + (f"?{query_text}" if query_text else "")


# The shared cache, which holds the API's rate-limit counters: Redis in production, so every web
# worker counts against one limit (a per-process memory cache would let N workers allow N times
# the rate); a memory cache in development and tests unless CACHE_URL names a Redis.
# By default production's is the broker's Redis, in another database (_cache_url_beside).
CACHE_URL = os.environ.get("CACHE_URL")
if CACHE_URL is None:  # only derived when unset: an explicit CACHE_URL needs no parsable REDIS_URL
    CACHE_URL = _cache_url_beside(REDIS_URL) if PRODUCTION else ""
CACHE_URL = CACHE_URL.strip()
if CACHE_URL.startswith(("redis://", "rediss://", "unix://")):
    CACHES = {"default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL,
        "KEY_PREFIX": "secondlook-cache",
        # a slow or absent Redis must not hold a request up (the throttles then let it through)
        "OPTIONS": {"socket_timeout": 0.5, "socket_connect_timeout": 0.5},
    }}
elif CACHE_URL in ("", "locmem://"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
else:
    raise ImproperlyConfigured(f"CACHE_URL must be redis://..., rediss://..., unix://... or locmem://, "
                               f"not {CACHE_URL!r}")
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "inference"
# Everything runs on "inference" unless routed here; training gets workers of its own.
CELERY_TASK_ROUTES = {"classifier.tasks.train_model": {"queue": "training"},
                      "cases.tasks.rescore_images": {"queue": "rescoring"}}
# Idempotent tasks: acknowledge after they finish, and redeliver if a worker dies mid-task.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One task reserved per worker process (Celery's default is 4): a re-scoring task already fetched
# would otherwise wait ahead of an upload that arrives after it, whatever the queue order.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = 120
# A prediction whose worker dies while scoring it is sent again after SCORING_BACKOFF_S (doubling
# each time) and failed for good, with its reason, after SCORING_MAX_ATTEMPTS runs.
SCORING_MAX_ATTEMPTS = int(os.environ.get("SCORING_MAX_ATTEMPTS", "3"))
SCORING_BACKOFF_S = float(os.environ.get("SCORING_BACKOFF_S", "5"))
# A pending re-score sent this long ago is sent again (its message may be lost). Longer than an
# upload's: a re-score of every image waits behind its own backlog for hours, and sending that
# backlog again every few minutes would only fill the broker with duplicates.
RESCORE_STALE_AFTER_S = float(os.environ.get("RESCORE_STALE_AFTER_S", str(6 * 3600)))
# A running prediction whose worker does not answer a ping is re-queued after this grace
SCORING_ORPHAN_GRACE_S = float(os.environ.get("SCORING_ORPHAN_GRACE_S", "5"))
# Publishing a task from a web request gives up after this (connect and socket), so a hung
# broker never holds a request: the upload stands and the sweep sends its task later.
BROKER_PUBLISH_TIMEOUT_S = float(os.environ.get("BROKER_PUBLISH_TIMEOUT_S", "1"))
CELERY_TASK_TIME_LIMIT = 180
TRAINING_SOFT_TIME_LIMIT = int(os.environ.get("TRAINING_SOFT_TIME_LIMIT", str(3 * 3600)))
TRAINING_TIME_LIMIT = TRAINING_SOFT_TIME_LIMIT + 600
# An ensemble run trains up to this many CNNs in a row, each within the single run's soft limit
# (classifier.ensemble_training.time_limits_s): the largest one is the longest task there is.
TRAINING_MAX_ENSEMBLE_MEMBERS = 3
LONGEST_TASK_TIME_LIMIT = (TRAINING_MAX_ENSEMBLE_MEMBERS * TRAINING_SOFT_TIME_LIMIT
                           + (TRAINING_TIME_LIMIT - TRAINING_SOFT_TIME_LIMIT))
# Must exceed the longest task, or Redis hands a running task to a second worker.
# "priority": a worker of "inference,rescoring" always takes an interactive task first, so
# re-scoring every image never delays a clinician's upload by more than the task at hand.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": LONGEST_TASK_TIME_LIMIT + 3600,
                                   "queue_order_strategy": "priority"}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
SWEEP_INTERVAL_SECONDS = float(os.environ.get("SWEEP_INTERVAL_SECONDS", "30"))


def _every(task: str, seconds: float) -> dict:
    """A beat entry whose message expires before the next one is sent: while no worker takes them
    (all stopped or busy) sweeps do not pile up in the queue, to run one after the other later."""
    return {"task": task, "schedule": seconds, "options": {"expires": seconds * 0.9}}


CELERY_BEAT_SCHEDULE = {
    "sweep-unqueued-predictions": _every("cases.tasks.sweep_pending", SWEEP_INTERVAL_SECONDS),
    "fail-stale-training-runs": _every("classifier.tasks.sweep_training_runs", 300.0),
    "fail-stale-rescoring-jobs": _every("cases.tasks.sweep_rescore_jobs", 300.0),
}

# Rows per page of the patient list and the review queue
LIST_PAGE_SIZE = int(os.environ.get("LIST_PAGE_SIZE", "50"))
# A dermatologist's claim on a case lapses after this; another reviewer may then take it over
CLAIM_EXPIRY_HOURS = float(os.environ.get("CLAIM_EXPIRY_HOURS", "4"))
# A lesion's timeline marks a visit "changed" when its melanoma probability rose by more than
# this since the most recent earlier visit with a comparable score (complete, same model version;
# absolute, 0..1), or the dermatologist recorded a change
FOLLOW_UP_SCORE_RISE = float(os.environ.get("FOLLOW_UP_SCORE_RISE", "0.10"))
# Monitoring (admin, cases.drift): ISO weeks shown, weeks of production that are the reference, and
# the drift alert: the latest complete week (with at least MONITOR_MIN_IMAGES scored images) alerts
# when its lesion flag rate differs from the reference period's by more than MONITOR_FLAG_RATE_BOUND
# (absolute) at Bonferroni-corrected significance, or the population stability index of its
# melanoma probabilities exceeds MONITOR_PSI_BOUND (on at least MONITOR_MIN_PSI_IMAGES images)
MONITOR_WEEKS = int(os.environ.get("MONITOR_WEEKS", "12"))
MONITOR_REFERENCE_WEEKS = int(os.environ.get("MONITOR_REFERENCE_WEEKS", "4"))
MONITOR_FLAG_RATE_BOUND = float(os.environ.get("MONITOR_FLAG_RATE_BOUND", "0.15"))
MONITOR_PSI_BOUND = float(os.environ.get("MONITOR_PSI_BOUND", "0.25"))
MONITOR_MIN_IMAGES = int(os.environ.get("MONITOR_MIN_IMAGES", "30"))
# the PSI is held to MONITOR_PSI_BOUND only for a week (and a reference histogram) with at least this
# many images the model could assess: on fewer the index of an unchanged distribution is mostly noise
MONITOR_MIN_PSI_IMAGES = int(os.environ.get("MONITOR_MIN_PSI_IMAGES", "200"))

# --- Integration API (api/): tokens issued by an admin, the same scoping as the pages -----------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "api.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",  # the docs page's "Try it out"
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated", "api.permissions.TokenScope"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": LIST_PAGE_SIZE,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_CLASSES": ["api.throttling.UserRateThrottle", "api.throttling.AnonRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "user": os.environ.get("API_RATE_USER", "600/minute"),
        "anon": os.environ.get("API_RATE_ANON", "60/minute"),
        "uploads": os.environ.get("API_RATE_UPLOADS", "120/minute"),
    },
    "EXCEPTION_HANDLER": "api.errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "SecondLook API",
    "DESCRIPTION": "Decision support for dermoscopy: patients, visits, lesions, image upload, model "
                   "scores, dermatologists' reviews and the model registry. It assists; it never "
                   "diagnoses alone. Authenticate with `Authorization: Token <key>` (issued by an admin).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SWAGGER_UI_DIST": "SIDECAR",  # served from our static files: no external assets
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "api.schema.add_error_responses"],
    "ENUM_NAME_OVERRIDES": {
        "CaseStatusEnum": "cases.models.Case.Status",
        "PredictionStatusEnum": "cases.models.Prediction.Status",
        "ModelVersionStatusEnum": "classifier.models.ModelVersion.Status",
        "DiagnosisEnum": "cases.models.DIAGNOSIS_CHOICES",
    },
}

# --- Health checks (melanoma_site.health) ---------------------------------------------------
HEALTH_CACHE_SECONDS = float(os.environ.get("HEALTH_CACHE_SECONDS", "5"))
# A token that monitoring presents (Authorization: Bearer ...) to see the detailed checks; staff
# users see them when logged in. Unset: staff only.
HEALTH_TOKEN = os.environ.get("HEALTH_TOKEN", "")

# --- Security (production) ------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = int(os.environ.get("SESSION_COOKIE_AGE", str(8 * 3600)))
CSRF_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # a load balancer's plain-HTTP probe of /health/live (or /health/) gets its answer, not a 301
    SECURE_REDIRECT_EXEMPT = [r"^health/"]
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    if TRUSTED_PROXIES:  # X-Forwarded-Proto only means something when our own proxy sets it
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

SITE_NAME = "SecondLook"
