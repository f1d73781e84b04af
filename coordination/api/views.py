"""Thin views: validate → call a service or selector → serialize."""

from functools import partial

from django.db import connection
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from django.utils import timezone
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from coordination import selectors, services, webhooks
from coordination.api.pagination import LIST_MAX_LIMIT
from coordination.api.prefer import PREFER_WAIT, PREFERENCE_APPLIED, PreferWaitMixin
from coordination.api.idempotency import idempotency_key_from, request_hash, submit_once
from coordination.api.schema import ErrorSerializer, HealthSerializer, JobBatchAnswerSerializer, QueueStatusSerializer
from coordination.api.serializers import CatalogModelSerializer, JobBatchSerializer, JobListQuerySerializer, JobSerializer, JobSubmitSerializer
from coordination.api.throttling import SubmitThrottledMixin
from coordination.exceptions import ModelNotFound, NotAllowed
from coordination.models import CatalogModel, Job

# --- OpenAPI: what each operation takes and answers (served at /schema, shown at /docs) ---------
# Shared with the workflows app's operations (workflows/api.py), which submit jobs too.


def _error(description: str, **kwargs) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description, **kwargs)


COMMON_ERRORS = {
    401: _error("No or bad credentials."),
    403: _error("Not allowed."),
    503: _error("The database is unreachable; nothing was changed. Retry after Retry-After seconds."),
}
NOT_FOUND = {404: _error("No such job or workflow, or not yours (an id that is not a UUID is not found).")}
JOB_ID = OpenApiParameter("job_id", OpenApiTypes.UUID, OpenApiParameter.PATH)
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
    OpenApiParameter.HEADER,
    description="Retrying with the same key returns the job the first request made (200) instead of a second one.",
)
SUBMIT_RESPONSES = {
    201: OpenApiResponse(JobSerializer, description="Accepted: the new job."),
    200: OpenApiResponse(JobSerializer, description="Idempotency-Key seen before: the job it made."),
    400: _error("Bad input; `fields` says which (an unknown model lists the known ones)."),
    **COMMON_ERRORS,
    409: _error("A live job of yours already has this dedupe_key (`job_id` names it), or the one to replace is running."),
    413: _error("The body is larger than the server takes (DATA_UPLOAD_MAX_MEMORY_SIZE); nothing was accepted."),
    422: _error("Idempotency-Key reused with a different request."),
    429: _error("Too many submissions, too many pending jobs, or the model's line is full (max_waiting); "
                "try again after Retry-After seconds."),
}
RETRY_AFTER = OpenApiParameter(
    "Retry-After", OpenApiTypes.INT, OpenApiParameter.HEADER, response=[429, 503], description="Seconds to wait."
)


def job_answer(job_id) -> dict:
    """A job's JSON as a submit or a cancel answers it (read again: what the coordinator decided)."""
    return JobSerializer(selectors.with_retries(Job.objects.select_related("workflow_execution")).get(pk=job_id)).data


def _job_response(job: Job, code: int) -> Response:
    return Response(job_answer(job.pk), status=code)


def submit_response(request, validated: dict, submit) -> Response:
    """Create the job, or, for an Idempotency-Key this user already sent, answer its job with 200.

    `submit(owner=..., on_create=...)` accepts the job (a service); the workflows app's execute
    answers through this too."""
    key = idempotency_key_from(request)
    if key is None:
        return _job_response(submit(owner=request.user), status.HTTP_201_CREATED)
    job, created = submit_once(
        user=request.user,
        key=key,
        digest=request_hash(path=request.path, data=validated),
        submit=partial(submit, owner=request.user),
    )
    return _job_response(job, status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@extend_schema(
    methods=["GET"],
    summary="List jobs",
    description="Your jobs (staff: everyone's), newest first.",
    parameters=[
        OpenApiParameter("status", OpenApiTypes.STR, enum=Job.Status.values),
        OpenApiParameter("kind", OpenApiTypes.STR, enum=Job.Kind.values),
        OpenApiParameter("model", OpenApiTypes.STR, description="Jobs submitted for this model (a catalog model's name)."),
        RETRY_AFTER,
    ],
    responses={
        200: JobSerializer(many=True),
        400: _error("A query parameter's value is bad (`fields` names it): an unknown status, kind or model (the "
                    f"known models are listed), or a limit outside 1-{LIST_MAX_LIMIT} or a negative offset."),
        **COMMON_ERRORS,
    },
)
@extend_schema(
    methods=["POST"],
    summary="Submit a job",
    description="Queue a job for one model. Rate-limited per user (429).",
    request=JobSubmitSerializer,
    parameters=[IDEMPOTENCY_KEY, PREFER_WAIT, RETRY_AFTER, PREFERENCE_APPLIED],
    examples=[
        OpenApiExample(
            "A short video",
            value={"prompt": "A knight rides at dawn", "model": "motion-2.0-fast", "params": {"simulate_seconds": 2}},
            request_only=True,
        )
    ],
    responses=SUBMIT_RESPONSES,
)
class JobListCreateView(PreferWaitMixin, SubmitThrottledMixin, ListAPIView):
    serializer_class = JobSerializer
    wait_methods = {"POST"}

    def get_queryset(self):
        query = JobListQuerySerializer(data=self.request.query_params, context={"user": self.request.user})
        query.is_valid(raise_exception=True)
        return selectors.job_list(user=self.request.user, **query.validated_data)

    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        # Every waiting job's place in line, for the whole page in one query.
        waiting = [job.job_id for job in page if job.status == Job.Status.PENDING]
        context = {**self.get_serializer_context(), "queue_positions": selectors.job_queue_positions(waiting)}
        return self.get_paginated_response(JobSerializer(page, many=True, context=context).data)

    def post(self, request):
        serializer = JobSubmitSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return submit_response(request, serializer.validated_data, partial(services.job_submit, **serializer.validated_data))


@extend_schema(
    summary="Submit a batch of jobs",
    description=(
        f"Queue up to {services.BATCH_MAX_JOBS} jobs in one request: `{{\"jobs\": [body, ...]}}`, each body a "
        "`POST /jobs` body with an optional `client_ref` that comes back on its job. Every body is checked "
        "first: one bad body is a 400 naming its place (`jobs[3].model: ...`) and nothing is accepted. "
        "Then all are accepted at once, in their order, as that many `POST /jobs` in a row would be. "
        "Each job counts towards the submission rate and the pending-jobs limit (429, nothing accepted). "
        "An Idempotency-Key stands for the whole batch: a retry answers its jobs again (200)."
    ),
    request=JobBatchSerializer,
    parameters=[IDEMPOTENCY_KEY, RETRY_AFTER],
    examples=[
        OpenApiExample(
            "Two videos and an image",
            value={"jobs": [
                {"prompt": "A knight rides at dawn", "model": "motion-2.0-fast", "client_ref": "scene-1"},
                {"prompt": "The knight at dusk", "model": "motion-2.0-fast", "client_ref": "scene-2"},
                {"prompt": "A castle", "model": "flux-dev", "client_ref": "poster"},
            ]},
            request_only=True,
        )
    ],
    responses={
        201: OpenApiResponse(JobBatchAnswerSerializer, description="Accepted: the new jobs, in the order sent."),
        200: OpenApiResponse(JobBatchAnswerSerializer, description="Idempotency-Key seen before: the jobs it made."),
        400: _error("Bad input: `fields` names the body and its field (`jobs[3].model`); an empty list or more "
                    f"than {services.BATCH_MAX_JOBS} jobs too. Nothing was accepted."),
        **COMMON_ERRORS,
        403: _error("Not allowed, e.g. a priority above 0 without being staff (the message names the body)."),
        413: _error("The body is larger than the server takes (DATA_UPLOAD_MAX_MEMORY_SIZE): send the jobs in "
                    "smaller batches. Nothing was accepted."),
        422: _error("Idempotency-Key reused with a different request."),
        409: _error("A body's dedupe_key is held by a live job of yours (`job_id` names it); nothing was accepted."),
        429: _error("Too many submissions (each job counts), the batch would pass the pending-jobs limit, or a "
                    "model's line is full (max_waiting); "
                    "nothing was accepted."),
    },
)
class JobBatchView(SubmitThrottledMixin, APIView):
    def submission_count(self, request) -> int:
        # Read before the body is checked (throttles run first): a list's length, else one.
        jobs = request.data.get("jobs") if isinstance(request.data, dict) else None
        return max(len(jobs), 1) if isinstance(jobs, list) else 1

    def post(self, request):
        serializer = JobBatchSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        bodies = serializer.validated_data["jobs"]
        submit = partial(services.jobs_submit_batch, owner=request.user, bodies=bodies)
        key = idempotency_key_from(request)
        if key is None:
            return _batch_response(submit(), status.HTTP_201_CREATED)
        jobs, created = submit_once(
            user=request.user,
            key=key,
            digest=request_hash(path=request.path, data=serializer.validated_data),
            # The key is stored against the batch's first job; a replay reads the batch from it.
            submit=lambda on_create: submit(on_create=lambda jobs: on_create(jobs[0])),
            replay=lambda first: selectors.job_batch(first=first, size=len(bodies)),
        )
        return _batch_response(jobs, status.HTTP_201_CREATED if created else status.HTTP_200_OK)


def _batch_response(jobs: list[Job], code: int) -> Response:
    """The jobs as each is answered to POST /jobs, read again in one query, with the places in line
    of those that wait in one more."""
    jobs = selectors.jobs_in_order([job.job_id for job in jobs])
    positions = selectors.job_queue_positions([job.job_id for job in jobs if job.status == Job.Status.PENDING])
    data = JobSerializer(jobs, many=True, context={"queue_positions": positions}).data
    return Response({"jobs": data}, status=code)


@extend_schema(
    summary="One job",
    parameters=[JOB_ID, PREFER_WAIT, RETRY_AFTER, PREFERENCE_APPLIED],
    responses={200: JobSerializer, **COMMON_ERRORS, **NOT_FOUND},
)
class JobDetailView(PreferWaitMixin, APIView):
    wait_methods = {"GET"}

    def get(self, request, job_id: str):
        detail = selectors.job_detail(user=request.user, job_id=job_id)
        return Response(JobSerializer(detail.job, context={"detail": detail}).data)


@extend_schema(
    summary="Cancel a job",
    parameters=[JOB_ID, RETRY_AFTER],
    request=None,
    responses={
        200: OpenApiResponse(JobSerializer, description="Cancelled (it was pending)."),
        202: OpenApiResponse(JobSerializer, description="Asked to stop: still running until its worker stops it."),
        **COMMON_ERRORS,
        **NOT_FOUND,
        403: _error("Another user's job, and you may not operate the queue (staff who may only read)."),
        409: _error("The job has already finished."),
    },
)
class JobCancelView(APIView):
    def post(self, request, job_id: str):
        job = selectors.job_to_change(user=request.user, job_id=job_id)
        # Staff who operate the queue may cancel anyone's job: the job's `error` says who did, not "its owner".
        if job.owner_id == request.user.pk:
            reason = "Cancelled by its owner"
        else:
            reason = f"Cancelled by {request.user.username} (staff)"
        job = services.job_cancel(job_id=job.job_id, user=request.user, reason=reason)
        # A running job is asked to stop: 202, still `running` with `cancel_requested_at`, until its
        # worker stops it (or its lease lapses) and it ends `cancelled`.
        code = status.HTTP_202_ACCEPTED if job.status == Job.Status.RUNNING else status.HTTP_200_OK
        return _job_response(job, code)


@extend_schema(
    summary="Retry a job",
    description=(
        "A new job with the request the ended job (failed, expired, cancelled, or completed: run again) was accepted "
        "with: prompt, model (a workflow: its own copy of its steps and inputs), job_type, params, priority, client_ref, "
        "webhook and dedupe_key, and its owner, whoever retries it. A start-by deadline gives the retry as long to "
        "wait as the job had. It is submitted as POST /jobs submits (it starts or waits by the same rules, and is "
        "refused for the same reasons); `retry_of` names the job it retries, whose `retried_as` lists it. "
        "Its owner may retry a job, and so may staff who may operate the queue (coordination.operate_queue)."
    ),
    parameters=[JOB_ID, IDEMPOTENCY_KEY, RETRY_AFTER],
    request=None,
    responses={
        201: OpenApiResponse(JobSerializer, description="Accepted: the new job."),
        200: OpenApiResponse(JobSerializer, description="Idempotency-Key seen before: the job that retry made."),
        400: _error("The request is no longer accepted as it was (e.g. its model was disabled, or an input file "
                    "deleted, since); nothing was made."),
        **COMMON_ERRORS,
        **NOT_FOUND,
        403: _error("Another user's job, and you may not operate the queue (staff who may only read)."),
        409: _error("The job has not ended (it is pending or running); or a live job of its owner holds its "
                    "dedupe_key (`job_id` names it)."),
        422: _error("Idempotency-Key reused with a different request."),
        429: _error("Too many submissions, too many pending jobs, or the model's line is full (max_waiting); "
                    "try again after Retry-After seconds."),
    },
)
class JobRetryView(SubmitThrottledMixin, APIView):
    def post(self, request, job_id: str):
        job = selectors.job_to_change(user=request.user, job_id=job_id)  # its owner or an operator; else 403/404
        retry = partial(services.job_resubmit, job_id=job.job_id, actor=f"api:{request.user.username}")
        key = idempotency_key_from(request)
        if key is None:
            return _job_response(retry(), status.HTTP_201_CREATED)
        new, created = submit_once(
            user=request.user, key=key, digest=request_hash(path=request.path, data={}), submit=retry,
        )
        return _job_response(new, status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@extend_schema(
    summary="Queue status", parameters=[RETRY_AFTER], responses={200: QueueStatusSerializer, **COMMON_ERRORS}
)
class QueueStatusView(APIView):
    def get(self, request):
        return Response(selectors.queue_status(user=request.user))


@extend_schema(
    summary="Health",
    auth=[],
    responses={
        200: HealthSerializer,
        503: OpenApiResponse(HealthSerializer, description="The database did not answer."),
    },
)
class HealthView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    def get(self, request):
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except Exception as exc:
            return Response(
                {"status": "unavailable", "database": "unreachable", "error": str(exc).strip()[:200]},
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        return Response({"status": "ok", "database": "ok"})


class WebhookSecretSerializer(serializers.Serializer):
    secret = serializers.CharField(help_text="whsec_…: verify deliveries with it (Standard Webhooks).")
    previous_until = serializers.DateTimeField(
        allow_null=True, help_text="After a rotation: until when the previous secret also signs."
    )


class WebhookAttemptSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    status_code = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(allow_blank=True)


class WebhookDeliverySerializer(serializers.Serializer):
    webhook_id = serializers.CharField()
    event_type = serializers.CharField()
    url = serializers.CharField()
    state = serializers.CharField(help_text="pending (tried again at next_attempt_at), delivered, or failed (gave up after 24 h).")
    attempts = WebhookAttemptSerializer(many=True, source="attempt_rows.all")
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    delivered_at = serializers.DateTimeField(allow_null=True)


def _secret_answer(record) -> dict:
    previous_until = record.previous_until if record.previous_until and record.previous_until > timezone.now() else None
    return WebhookSecretSerializer({"secret": record.secret, "previous_until": previous_until}).data


@extend_schema(summary="Your webhook signing secret", parameters=[RETRY_AFTER],
               responses={200: WebhookSecretSerializer, **COMMON_ERRORS})
class WebhookSecretView(APIView):
    def get(self, request):
        return Response(_secret_answer(webhooks.secret_get(user=request.user)))


@extend_schema(summary="Rotate your webhook signing secret", parameters=[RETRY_AFTER], request=None,
               responses={200: WebhookSecretSerializer, **COMMON_ERRORS})
class WebhookSecretRotateView(APIView):
    def post(self, request):
        return Response(_secret_answer(webhooks.secret_rotate(user=request.user)))


@extend_schema(summary="A job's webhook deliveries", parameters=[JOB_ID, RETRY_AFTER],
               responses={200: WebhookDeliverySerializer(many=True), **COMMON_ERRORS, **NOT_FOUND})
class JobWebhooksView(APIView):
    def get(self, request, job_id: str):
        job = selectors.job_get(user=request.user, job_id=job_id)
        deliveries = job.webhook_deliveries.prefetch_related("attempt_rows").order_by("id")
        return Response(WebhookDeliverySerializer(deliveries, many=True).data)


# --- The catalog as code: GET /models, GET/PATCH/PUT /models/{name} ----------------------------------

MODEL_NAME = OpenApiParameter(
    "name", OpenApiTypes.STR, OpenApiParameter.PATH,
    description="The model's name as clients name it; it may hold a slash, written as is: /models/minimax/video-01.",
)
MODEL_NOT_FOUND = {404: _error("No such model, or (not staff) a disabled one.")}
MODEL_WRITE_ERRORS = {
    400: _error("Bad input; `fields` names the field (as the admin's form checks it). Nothing was changed."),
    **COMMON_ERRORS,
    403: _error("Not staff: only staff change the catalog."),
}
CATALOG_ANSWER = ("Staff: every field. Anyone else: name, media_type, capacity, description and paused of the "
                  "enabled models, those they may submit to.")


def _model_answer(request, name: str) -> dict:
    model = selectors.catalog_model_find(user=request.user, name=name)
    return CatalogModelSerializer(model, context={"staff": request.user.is_staff}).data


def _staff_only(request) -> None:
    if not request.user.is_staff:
        raise NotAllowed("Only staff may change the model catalog.")


@extend_schema(summary="The model catalog", description=f"Every model, by name. {CATALOG_ANSWER}",
               parameters=[RETRY_AFTER], responses={200: CatalogModelSerializer(many=True), **COMMON_ERRORS})
class ModelListView(APIView):
    def get(self, request):
        models = selectors.catalog_model_list(user=request.user)
        return Response(CatalogModelSerializer(models, many=True, context={"staff": request.user.is_staff}).data)


@extend_schema(methods=["GET"], summary="One catalog model", description=CATALOG_ANSWER,
               parameters=[MODEL_NAME, RETRY_AFTER],
               responses={200: CatalogModelSerializer, **COMMON_ERRORS, **MODEL_NOT_FOUND})
@extend_schema(
    methods=["PATCH"],
    summary="Change a catalog model (staff)",
    description="Changes the fields sent, as the admin would: under the coordinator lock, audited (`model_changed`, "
                "actor `api:<username>`); a new capacity starts at once the waiting jobs it has room for. "
                "`max_runtime_seconds` is accepted as the old name of `timeout_seconds`.",
    parameters=[MODEL_NAME, RETRY_AFTER],
    request=CatalogModelSerializer,
    responses={200: CatalogModelSerializer, **MODEL_WRITE_ERRORS, **MODEL_NOT_FOUND},
)
@extend_schema(
    methods=["PUT"],
    summary="Create or replace a catalog model (staff)",
    description="The whole model: a field left out takes its default. Saved as PATCH saves (locked, audited, "
                "waiting jobs decided again); a model's pause is kept.",
    parameters=[MODEL_NAME, RETRY_AFTER],
    request=CatalogModelSerializer,
    responses={
        201: OpenApiResponse(CatalogModelSerializer, description="Created."),
        200: OpenApiResponse(CatalogModelSerializer, description="Replaced."),
        **MODEL_WRITE_ERRORS,
        404: _error("No model name in the path (/models/)."),
    },
)
class ModelDetailView(APIView):
    def get(self, request, name: str):
        return Response(_model_answer(request, name))

    def patch(self, request, name: str):
        _staff_only(request)
        model = selectors.catalog_model_find(user=request.user, name=name)
        serializer = CatalogModelSerializer(model, data=request.data, partial=True, context={"name": name})
        serializer.is_valid(raise_exception=True)
        services.catalog_model_save(model=serializer.edited(model), actor=f"api:{request.user.username}")
        return Response(_model_answer(request, name))

    def put(self, request, name: str):
        _staff_only(request)
        try:
            before = selectors.catalog_model_find(user=request.user, name=name)
        except ModelNotFound:
            before = None
        serializer = CatalogModelSerializer(before, data=request.data, context={"name": name})
        serializer.is_valid(raise_exception=True)
        model = serializer.edited(before or CatalogModel(name=name), replace=True)
        services.catalog_model_save(model=model, actor=f"api:{request.user.username}")
        return Response(_model_answer(request, name), status=status.HTTP_200_OK if before else status.HTTP_201_CREATED)
