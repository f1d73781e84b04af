import json

from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models as db_models
from django.utils.dateparse import parse_datetime
from rest_framework import serializers

from drf_spectacular.utils import extend_schema_field

from coordination.models import CatalogModel, Job, JobFile, MediaType, ProviderRun, timeout_with_old_name
from coordination.outputs.links import files_shown
from coordination.services import BATCH_MAX_JOBS
from coordination.selectors import catalog_model_names, job_list, job_queue_position, job_retried_as, run_at_provider


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, so a typo ("modle") is an error, not a silent default."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {"non_field_errors": [f"Unknown field(s): {', '.join(unknown)}. Allowed: {', '.join(self.fields)}."]}
                )
        return super().to_internal_value(data)


def json_type(value) -> str:
    """What a client sent, in JSON's words, for a message that says what was expected instead."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else type(value).__name__


class StringField(serializers.CharField):
    """A JSON string and nothing else. DRF's CharField turns 42 into "42": a client that sends a number
    where text belongs (`"prompt": 42`) would have a job made of what it did not mean. Every text field
    of a request body is one of these."""

    default_error_messages = {"invalid": "must be a string (text in double quotes), not {input_type}."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid", input_type=json_type(data))
        return super().to_internal_value(data)


PARAMS_MAX_BYTES = 16 * 1024
PARAMS_MAX_DEPTH = 5


def _depth_exceeds(value, limit: int) -> bool:
    """Whether objects and arrays nest more than `limit` levels (params itself is level 1).

    Stops at the first level past the limit, so a hostile, deeply nested body costs little.
    """
    if not isinstance(value, (dict, list)):
        return False
    if limit == 0:
        return True
    children = value.values() if isinstance(value, dict) else value
    return any(_depth_exceeds(child, limit - 1) for child in children)


def _unstorable_text(value) -> bool:
    """Whether a key or a string anywhere in `value` holds U+0000 or half of a surrogate pair: JSON can
    say them, but no database column of ours can hold them (PostgreSQL refuses them in jsonb)."""
    if isinstance(value, str):
        return "\x00" in value or not value.isascii() and any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(_unstorable_text(key) or _unstorable_text(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_unstorable_text(item) for item in value)
    return False


def validate_params(value):
    if not isinstance(value, dict):
        raise serializers.ValidationError("params must be a JSON object, e.g. {\"simulate_seconds\": 2}.")
    if _depth_exceeds(value, PARAMS_MAX_DEPTH):
        raise serializers.ValidationError(
            f"params nests objects and arrays more than {PARAMS_MAX_DEPTH} levels deep (params itself is level 1)."
        )
    if _unstorable_text(value):
        raise serializers.ValidationError(
            "params may not contain the character U+0000 or an unpaired surrogate (\\ud800-\\udfff), in a key or a value."
        )
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > PARAMS_MAX_BYTES:
        raise serializers.ValidationError(
            f"params is {size} bytes as JSON; the limit is {PARAMS_MAX_BYTES} bytes (16 KB)."
        )
    if "simulate_fail" in value and not isinstance(value["simulate_fail"], (bool, str)):
        raise serializers.ValidationError(
            "params.simulate_fail must be true, false, or the failure message to raise (a string)."
        )
    seconds = value.get("simulate_seconds")
    if "simulate_seconds" in value:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:  # null too
            raise serializers.ValidationError("params.simulate_seconds must be a number of seconds, 0 or more.")
        if seconds > settings.COORDINATOR_JOB_TIMEOUT:
            raise serializers.ValidationError(
                f"params.simulate_seconds must be at most {settings.COORDINATOR_JOB_TIMEOUT} (the job timeout)."
            )
    return value


class AwareDateTimeField(serializers.DateTimeField):
    """An ISO 8601 time that must say its zone: a time without one is refused, not taken as UTC."""

    def to_internal_value(self, value):
        try:
            parsed = parse_datetime(value) if isinstance(value, str) else None
        except ValueError:  # well-formed but impossible (minute 60): the field's own message says so
            parsed = None
        if parsed is not None and parsed.tzinfo is None:
            raise serializers.ValidationError("needs a time zone, e.g. 2026-12-01T10:30:00Z.")
        return super().to_internal_value(value)


class SubmitFields(StrictSerializer):
    params = serializers.JSONField(required=False, default=dict, validators=[validate_params])
    priority = serializers.IntegerField(required=False, default=0, min_value=-1000, max_value=1000)
    # Scheduling policies (checked by coordination.services.job_policies_set, which names the field).
    start_by = AwareDateTimeField(
        required=False, help_text="ISO 8601 with a zone: if the job has not started by then, it ends `expired` (at most 30 days ahead)."
    )
    max_wait_seconds = serializers.IntegerField(
        required=False, help_text="The same deadline as a number of seconds from now (not both)."
    )
    dedupe_key = StringField(
        required=False, trim_whitespace=False,
        help_text="Your name for this work (1-255 printable characters): no two of your live jobs share one.",
    )
    webhook_url = StringField(
        required=False, max_length=2048, help_text="POSTed a signed event when the job starts or ends (see webhook_events_filter)."
    )
    webhook_events_filter = serializers.ListField(
        child=StringField(), required=False,
        help_text="Which events: from started, completed, failed, cancelled, expired, files (a completed job's files kept; "
                  "default: the four terminal ones).",
    )
    on_duplicate = serializers.ChoiceField(
        choices=["reject", "replace"], required=False,
        help_text="When a live job of yours has the dedupe_key: reject (409, the default) or replace a waiting one.",
    )


class JobSubmitSerializer(SubmitFields):
    prompt = StringField(
        trim_whitespace=True,
        error_messages={
            "required": "A prompt is required: describe what to generate.",
            "blank": "A prompt is required: describe what to generate.",
        },
    )
    model = StringField(error_messages={"required": "model is required, e.g. \"motion-2.0-fast\"."})
    job_type = serializers.ChoiceField(choices=MediaType.choices, required=False)


class JobBatchItemSerializer(JobSubmitSerializer):
    """One job of a batch: a POST /jobs body, and the client's own reference for it."""

    client_ref = StringField(
        max_length=200,
        required=False,
        allow_null=True,
        help_text="Your own reference for this job (at most 200 characters): it comes back on the job.",
    )


class JobBatchSerializer(StrictSerializer):
    """POST /jobs/batch: {"jobs": [body, ...]}. A bad body's errors are named by its place in the
    list (`jobs[3].model`), so the client knows which one to fix."""

    # A ListSerializer built here, not many=True: its messages are for the list, not for each body.
    jobs = serializers.ListSerializer(
        child=JobBatchItemSerializer(),
        allow_empty=False,
        max_length=BATCH_MAX_JOBS,
        error_messages={
            # DRF formats these messages: literal braces are doubled.
            "not_a_list": 'jobs must be a list of job bodies (got {input_type}), e.g. '
            '{{"jobs": [{{"prompt": "A castle", "model": "flux-dev"}}]}}.',
            "required": 'A batch is {{"jobs": [body, ...]}}: "jobs" is missing.',
            "null": "jobs must be a list of job bodies, not null.",
            "empty": "A batch needs at least one job in \"jobs\".",
            "max_length": "A batch holds at most {max_length} jobs; send the rest in another batch.",
        },
    )

    def to_internal_value(self, data):
        try:
            return super().to_internal_value(data)
        except serializers.ValidationError as error:
            raise serializers.ValidationError(_by_place(error.detail)) from None


def _by_place(detail):
    """{"jobs": {1: {"model": [...]}}} → {"jobs[1].model": [...]}: each bad body's errors under its
    index (`jobs[1]` alone for errors of the whole body, such as an unknown field). Errors about
    the list itself (missing, not a list, empty, too long) are under "jobs"."""
    jobs = detail.get("jobs") if isinstance(detail, dict) else None
    if isinstance(jobs, dict) and set(jobs) == {"non_field_errors"}:
        return {**detail, "jobs": jobs["non_field_errors"]}  # about the list: empty, too long, not a list
    if not isinstance(jobs, dict) or not all(isinstance(index, int) for index in jobs):
        return detail
    placed = {key: value for key, value in detail.items() if key != "jobs"}
    for index, errors in sorted(jobs.items()):
        if not isinstance(errors, dict):
            placed[f"jobs[{index}]"] = errors  # the body is not an object at all
            continue
        for field, messages in errors.items():
            placed[f"jobs[{index}]" if field == "non_field_errors" else f"jobs[{index}].{field}"] = messages
    return placed


class JobListQuerySerializer(serializers.Serializer):
    """GET /jobs's filters (its `limit` and `offset`: coordination.api.pagination). A value that names
    nothing is a 400 naming its parameter, never an empty list: `?model=zzz` would otherwise answer
    as if there were no such jobs. Empty (`?status=`) is the same as absent."""

    status = serializers.ChoiceField(
        choices=Job.Status.values, required=False,
        error_messages={"invalid_choice": f"Unknown status '{{input}}'; use one of: {', '.join(Job.Status.values)}."},
    )
    kind = serializers.ChoiceField(
        choices=Job.Kind.values, required=False,
        error_messages={"invalid_choice": f"Unknown kind '{{input}}'; use one of: {', '.join(Job.Kind.values)}."},
    )
    model = StringField(required=False, help_text="Jobs submitted for this model (a catalog model's name).")

    def validate_model(self, value: str) -> str:
        known = catalog_model_names()
        # A model taken out of the catalog still names the jobs it ran.
        if value in known or job_list(user=self.context["user"], model=value).exists():
            return value
        raise serializers.ValidationError(f"Unknown model '{value}'. Known models: {', '.join(known)}.")


class HolderSerializer(serializers.Serializer):
    job_id = serializers.UUIDField()
    kind = serializers.CharField()


class GroupWaitSerializer(serializers.Serializer):
    name = serializers.CharField()
    running = serializers.IntegerField()
    capacity = serializers.IntegerField()


class WaitingForSerializer(serializers.Serializer):
    model = serializers.CharField()
    held_by = HolderSerializer(many=True)
    jobs_ahead = serializers.IntegerField()
    paused = serializers.BooleanField(help_text="An operator paused this model: no job starts on it until it is resumed.")
    groups = GroupWaitSerializer(many=True, help_text="The capacity groups this model belongs to, with their jobs running now.")


class WaitingForSlotSerializer(serializers.Serializer):
    slots = serializers.IntegerField(help_text="How many jobs may run at once (COORDINATOR_MAX_ACTIVE_JOBS); 1: serialized mode.")
    held_by = HolderSerializer(many=True, help_text="The jobs running in them, in the order they started.")
    jobs_ahead = serializers.IntegerField(
        help_text="Jobs before it in the whole line, not counting those a paused model holds (they step aside)."
    )


class AtProviderSerializer(serializers.Serializer):
    provider_job_id = serializers.CharField()
    style = serializers.CharField(help_text="poll or callback")
    status = serializers.CharField(help_text="What the provider last said of its job (queued, running, ...).")
    since = serializers.DateTimeField(help_text="When the provider accepted it (the worker let go of it then).")
    watched = serializers.BooleanField(help_text="Whether a poller watches it now (false: waiting to be adopted).")
    progress = serializers.FloatField(allow_null=True, help_text="How far along the provider says it is, 0-1 (null: it does not say).")
    queue_position = serializers.IntegerField(
        allow_null=True, help_text="Its place in the provider's own line, 0 first (null: the provider does not say, or it runs).")


class JobSerializer(serializers.ModelSerializer):
    queue_position = serializers.SerializerMethodField()
    at_provider = serializers.SerializerMethodField(
        help_text="A running job that waits at its provider, holding no worker process: what the provider "
                  "said of it (coordination/providers); null otherwise."
    )
    workflow_id = serializers.SerializerMethodField()
    current_step = serializers.SerializerMethodField()
    current_step_model = serializers.SerializerMethodField()
    retry_of = serializers.UUIDField(
        source="retry_of_id", read_only=True, allow_null=True,
        help_text="The ended job this one retries (POST /jobs/{id}/retry), with the request it had; null otherwise.",
    )
    retried_as = serializers.SerializerMethodField(
        help_text="The jobs made from this one by a retry, oldest first (each names this one as retry_of)."
    )

    class Meta:
        model = Job
        fields = [
            "job_id", "kind", "job_type", "model", "required_models", "status", "priority",
            "queue_position", "blocked_by_job_id", "conflict_reason", "queued_at", "created_at",
            "started_at", "completed_at", "prompt", "params", "result", "error", "attempt", "cancel_requested_at",
            "client_ref", "start_by", "dedupe_key", "webhook_url", "webhook_events_filter", "at_provider",
            "workflow_id", "current_step", "current_step_model", "retry_of", "retried_as",
        ]
        read_only_fields = fields

    def get_queue_position(self, job: Job) -> int | None:
        # Read beforehand for a page (context "queue_positions") or GET /jobs/{id} ("detail"), in one
        # query whatever their number; a job answered after a change (submit, cancel) counts its own.
        if "detail" in self.context:
            return self.context["detail"].queue_position
        if "queue_positions" in self.context:
            return self.context["queue_positions"].get(job.job_id)
        return job_queue_position(job)

    @extend_schema_field(AtProviderSerializer(allow_null=True))
    def get_at_provider(self, job: Job) -> dict | None:
        runs = getattr(job, "runs_in_flight", None)  # read beforehand for a page
        if runs is None:  # read only for a running normal job (run_at_provider)
            runs = ProviderRun.objects.filter(job_id=job.job_id, state=ProviderRun.State.IN_FLIGHT)
        run = run_at_provider(job, runs)
        if run is None:
            return None
        return AtProviderSerializer({"provider_job_id": run.provider_job_id, "style": run.style, "status": run.provider_status,
                                     "since": run.submitted_at, "watched": bool(run.watcher),
                                     "progress": run.progress, "queue_position": run.queue_position}).data

    @extend_schema_field(serializers.ListField(child=serializers.UUIDField()))
    def get_retried_as(self, job: Job) -> list:
        ids = getattr(job, "retried_ids", None)  # read with the job (selectors.with_retries)
        if ids is None:
            ids = job_retried_as(job.job_id)
        return [str(job_id) for job_id in ids]

    def _execution(self, job: Job):
        return getattr(job, "workflow_execution", None) if job.kind == Job.Kind.WORKFLOW else None

    def get_workflow_id(self, job: Job) -> str | None:
        execution = self._execution(job)
        return execution.workflow_id if execution else None

    def get_current_step(self, job: Job) -> int | None:
        execution = self._execution(job)
        return execution.current_step if execution else None

    def get_current_step_model(self, job: Job) -> str | None:
        execution = self._execution(job)
        return execution.current_step_model if execution else None

    def to_representation(self, job: Job) -> dict:
        data = super().to_representation(job)
        result = data.get("result")
        if job.status == Job.Status.COMPLETED and isinstance(result, dict) and isinstance(result.get("files"), list):
            # Each file as the coordinator keeps it (coordination/outputs): where, and how its copy stands.
            kept = getattr(job, "files_kept", None)  # read beforehand for a page
            if kept is None:
                kept = list(JobFile.objects.filter(job_id=job.job_id))
            if kept:
                data["result"] = {**result, "files": files_shown(job, result["files"], kept)}
        detail = self.context.get("detail")  # selectors.JobDetail, on GET /jobs/{id} only
        if detail is not None:
            # What a waiting job waits for, model by model: who holds it, how many are before it.
            waits = detail.waiting_for
            data["waiting_for"] = WaitingForSerializer(waits, many=True).data if waits is not None else None
            # The queue played forward from recent run times (coordination.estimates); null unless
            # waiting. Overdue: that instant has passed and it still waits (the jobs before it ran long).
            estimate = detail.estimate
            data["estimated_start_at"] = serializers.DateTimeField().to_representation(estimate.at) if estimate else None
            data["start_overdue"] = estimate.overdue if estimate else None
            # Every slot busy: it waits for one (in serialized mode, the single one), whoever holds its models.
            slot = detail.waiting_for_slot
            data["waiting_for_slot"] = WaitingForSlotSerializer(slot).data if slot is not None else None
        if job.kind != Job.Kind.WORKFLOW:
            for key in ("workflow_id", "current_step", "current_step_model"):
                data.pop(key)
        return data


# --- The catalog (GET /models, GET/PATCH/PUT /models/{name}) -------------------------------------

# What everyone sees of a model they may submit to; staff see every field.
CATALOG_PUBLIC_FIELDS = ("name", "media_type", "capacity", "description", "paused")
# Staff see and write every column of the catalog but these, so a column added to CatalogModel is in
# the API as it is (no secret is a column: only the names of the variables that hold them).
CATALOG_HIDDEN_FIELDS = ("id",)
# Shown, never written through the body: the name is the URL's, and a pause goes through the console
# (operations.model_pause). A body may repeat their values (a model read, edited and put back).
CATALOG_READ_ONLY_FIELDS = ("name", "paused")


class CatalogModelSerializer(StrictSerializer, serializers.ModelSerializer):
    """A catalog model, as GET /models answers it and as PATCH/PUT /models/{name} take it (staff).

    Validated as the admin's form validates it: each field, then the model's own checks
    (CatalogModel.clean, its constraints), each error under its field's name."""

    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        db_models.CharField: StringField,
        db_models.TextField: StringField,
    }
    max_runtime_seconds = serializers.IntegerField(
        write_only=True, required=False, allow_null=True, min_value=0,
        help_text="The old name of timeout_seconds, still accepted: with timeout_seconds too, the smaller of the two.",
    )

    class Meta:
        model = CatalogModel
        fields = [
            field.name for field in CatalogModel._meta.concrete_fields if field.name not in CATALOG_HIDDEN_FIELDS
        ] + ["max_runtime_seconds"]
        read_only_fields = CATALOG_READ_ONLY_FIELDS
        # The checks of model_catalog_capacity_positive and model_catalog_simulate_seconds_nonnegative,
        # said here under the field's name (the database constraint's message names only itself).
        extra_kwargs = {"capacity": {"min_value": 1}, "default_simulate_seconds": {"min_value": 0}}

    def to_internal_value(self, data):
        if isinstance(data, dict):
            current = {"name": self.context.get("name"), "paused": self.instance.paused if self.instance else False}
            for field in CATALOG_READ_ONLY_FIELDS:
                if field in data and data[field] != current[field]:
                    how = "the URL names the model" if field == "name" else "pause or resume it in the queue console"
                    raise serializers.ValidationError({field: [f"{field} is not changed here: {how}."]})
        return super().to_internal_value(data)

    def validate(self, attrs):
        # max_runtime_seconds alone is the deadline; with timeout_seconds, the smaller; null changes nothing.
        old = attrs.pop("max_runtime_seconds", None)
        if old is not None:
            attrs["timeout_seconds"] = timeout_with_old_name(attrs.get("timeout_seconds"), old)
        return attrs

    def edited(self, model: CatalogModel, *, replace: bool = False) -> CatalogModel:
        """`model` with the validated body applied and checked whole, as the admin checks it; not saved.
        `replace` (PUT): a field the body leaves out takes its default."""
        if replace:
            for field in CatalogModel._meta.concrete_fields:
                if field.name in self.fields and not self.fields[field.name].read_only:
                    setattr(model, field.attname, field.get_default())
        for field, value in self.validated_data.items():
            setattr(model, field, value)
        try:
            model.full_clean()
        except DjangoValidationError as error:
            raise serializers.ValidationError({
                "non_field_errors" if field == NON_FIELD_ERRORS else field: messages
                for field, messages in error.message_dict.items()
            }) from None
        return model

    def to_representation(self, model: CatalogModel) -> dict:
        data = super().to_representation(model)
        if not self.context.get("staff"):
            data = {field: data[field] for field in CATALOG_PUBLIC_FIELDS}
        return data
