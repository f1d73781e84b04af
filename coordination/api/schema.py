"""The OpenAPI schema (/schema): response shapes the views build as dicts, and extensions for what
drf-spectacular cannot see in a serializer (keys only some responses carry, JSON fields' types).

Importing this module registers the extensions; views.py imports it.
"""

from drf_spectacular.extensions import OpenApiSerializerExtension
from rest_framework import serializers

from coordination.api.serializers import (
    JobBatchSerializer,
    JobSerializer,
    JobSubmitSerializer,
    WaitingForSerializer,
    WaitingForSlotSerializer,
)
from coordination.models import Job
from coordination.services import BATCH_MAX_JOBS

class ErrorSerializer(serializers.Serializer):
    """Every error response: a message a person can act on, a code, and per-field messages for bad input."""

    def get_fields(self):
        # "fields" would shadow Serializer.fields as a class attribute, so the fields are listed here.
        return {
            "error": serializers.CharField(),
            "code": serializers.CharField(help_text="e.g. invalid, unknown_model, not_found, conflict."),
            "fields": serializers.DictField(
                required=False, help_text="Bad input only: the messages for each field, by field name."
            ),
        }


class ActiveJobSerializer(serializers.Serializer):
    job_id = serializers.UUIDField(allow_null=True)
    job_type = serializers.ChoiceField(Job.Kind.choices, allow_null=True, help_text="The job's kind.")
    models = serializers.ListField(child=serializers.CharField())


class ActiveSlotSerializer(ActiveJobSerializer):
    slot = serializers.IntegerField()
    started_at = serializers.DateTimeField(allow_null=True)


class QueuedJobSerializer(serializers.Serializer):
    """A waiting job. Someone else's (unless you are staff) shows only queue_position, kind, required_models."""

    job_id = serializers.UUIDField(required=False)
    kind = serializers.ChoiceField(Job.Kind.choices)
    model = serializers.CharField(allow_null=True, required=False)
    required_models = serializers.ListField(child=serializers.CharField())
    priority = serializers.IntegerField(required=False)
    queue_position = serializers.IntegerField()
    blocked_by_job_id = serializers.UUIDField(allow_null=True, required=False)
    conflict_reason = serializers.CharField(allow_null=True, required=False)
    queued_at = serializers.DateTimeField(allow_null=True, required=False)


class QueueStatusSerializer(serializers.Serializer):
    active_job = ActiveJobSerializer(help_text="The first slot's job (all nulls when it is free), as in the seed.")
    active_jobs = ActiveSlotSerializer(many=True)
    queued_jobs = QueuedJobSerializer(many=True, help_text="The line, first to start first (at most a set limit).")
    queue_length = serializers.IntegerField(help_text="How many jobs wait, all of them.")


class JobBatchAnswerSerializer(serializers.Serializer):
    jobs = JobSerializer(many=True, help_text="The batch's jobs, in the order they were sent.")


class HealthSerializer(serializers.Serializer):
    status = serializers.CharField(help_text="ok, or unavailable (503).")
    database = serializers.CharField(help_text="ok, or unreachable (503).")
    error = serializers.CharField(required=False, help_text="503 only: why the database did not answer.")


PARAMS_SCHEMA = {
    "type": "object",
    "additionalProperties": True,
    "properties": {
        "simulate_seconds": {"type": "number", "minimum": 0, "description": "How long the simulated run takes."},
        "simulate_fail": {
            "anyOf": [{"type": "boolean"}, {"type": "string"}],
            "description": "The simulated run raises (a string: with that message).",
        },
    },
}
STRING_LIST_SCHEMA = {"type": "array", "items": {"type": "string"}, "readOnly": True}


class JobSubmitSchema(OpenApiSerializerExtension):
    target_class = JobSubmitSerializer
    match_subclasses = True  # a batch's bodies (JobBatchItemSerializer) are POST /jobs bodies too

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        schema["properties"]["params"] = PARAMS_SCHEMA
        schema["additionalProperties"] = False  # StrictSerializer: an unknown field is a 400
        return schema


class JobBatchSchema(OpenApiSerializerExtension):
    target_class = JobBatchSerializer

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        jobs = schema["properties"]["jobs"]
        jobs.update(minItems=1, maxItems=BATCH_MAX_JOBS)
        jobs["description"] = f"1 to {BATCH_MAX_JOBS} POST /jobs bodies, each with an optional client_ref; accepted in this order."
        schema["additionalProperties"] = False
        return schema


class JobSchema(OpenApiSerializerExtension):
    target_class = JobSerializer
    # Keys only some responses carry: the workflow ones on workflow jobs, the waits on GET /jobs/{id}.
    optional = {
        "workflow_id", "current_step", "current_step_model", "waiting_for", "estimated_start_at", "start_overdue",
        "waiting_for_slot",
    }

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        properties = schema["properties"]
        properties["required_models"] = STRING_LIST_SCHEMA
        properties["client_ref"] = {
            "type": "string",
            "maxLength": 200,
            "nullable": True,
            "readOnly": True,
            "description": "The client_ref its POST /jobs/batch body gave it; null for any other job.",
        }
        properties["params"] = {**PARAMS_SCHEMA, "readOnly": True}
        properties["waiting_for"] = {
            "type": "array",
            "items": auto_schema.resolve_serializer(WaitingForSerializer, direction).ref,
            "nullable": True,
            "readOnly": True,
            "description": "GET /jobs/{job_id} only: for a pending job, what it waits for, model by model.",
        }
        properties["estimated_start_at"] = {
            "type": "string",
            "format": "date-time",
            "nullable": True,
            "readOnly": True,
            "description": "GET /jobs/{job_id} only: for a pending job, when it is expected to start (null while a paused "
            "model holds it); in the past when start_overdue.",
        }
        properties["start_overdue"] = {
            "type": "boolean",
            "nullable": True,
            "readOnly": True,
            "description": "GET /jobs/{job_id} only: for a pending job, true when estimated_start_at has passed while it "
            "still waits (the jobs before it ran longer than usual: it starts once they end); null with no estimate.",
        }
        properties["waiting_for_slot"] = {
            "allOf": [auto_schema.resolve_serializer(WaitingForSlotSerializer, direction).ref],
            "nullable": True,
            "readOnly": True,
            "description": "GET /jobs/{job_id} only: for a pending job while every slot is busy, the slot it "
            "waits for (in serialized mode, the single one), whatever its models; null while a slot is free.",
        }
        schema["required"] = [name for name in schema["required"] if name not in self.optional]
        return schema
