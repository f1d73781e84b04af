"""GET /workflows and POST /workflows/{workflow_id}/execute: the workflows app's part of the API.

It stands on the coordinator's API (the job it answers, Idempotency-Key handling, the submission
throttle, the errors), never the reverse: imports flow one way, workflows → coordination. Routed
from jobqueue_site/urls.py; importing this module registers its OpenAPI extension.
"""

from functools import partial

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import URLValidator
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from coordination.api.prefer import PREFER_WAIT, PREFERENCE_APPLIED, PreferWaitMixin
from coordination.api.schema import PARAMS_SCHEMA
from coordination.api.serializers import StringField, SubmitFields
from coordination.api.throttling import SubmitThrottledMixin
from coordination.api.views import COMMON_ERRORS, IDEMPOTENCY_KEY, NOT_FOUND, RETRY_AFTER, SUBMIT_RESPONSES, submit_response
from workflows.selectors import workflow_list_as_dicts
from workflows.services import workflow_execute, workflow_get

ADDRESS_MAX_LENGTH = 2048

_url_syntax = URLValidator(schemes=["http", "https"])


def validate_http_address(value: str) -> str:
    """An input image or video is fetched by the runner: only a plain http(s) address will do
    (no ftp:, javascript:, data: or file:), or `file:<file_id>`, a file of the user's own (POST
    /files: workflow_execute checks it is theirs)."""
    if value.startswith("file:"):
        return value
    scheme = value.split(":", 1)[0].lower() if ":" in value else ""
    if scheme not in ("http", "https"):
        shown = f"'{scheme}:'" if scheme else "none"
        raise serializers.ValidationError(
            f"Must be an http:// or https:// URL (scheme {shown} is not accepted), e.g. https://example.com/user.jpg."
        )
    try:
        _url_syntax(value)
    except DjangoValidationError:
        raise serializers.ValidationError("Must be a valid http(s) URL, e.g. https://example.com/user.jpg.") from None
    return value


class WorkflowExecuteSerializer(SubmitFields):
    """The workflow's own inputs (its definition's `inputs`, edited in the admin) are fields too."""

    prompt = StringField(required=False, allow_blank=True, default="")

    def __init__(self, *args, input_names: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        for name in input_names:
            if name in self.fields:
                continue  # an input may not shadow prompt, params or priority
            # Images and files are passed by address (http or https only); other inputs are short strings.
            is_address = name.endswith(("_image", "_video", "_url"))
            validators = [validate_http_address] if is_address else []
            self.fields[name] = StringField(
                required=False, max_length=ADDRESS_MAX_LENGTH, validators=validators, trim_whitespace=False
            )


class WorkflowExecuteSchema(OpenApiSerializerExtension):
    target_class = WorkflowExecuteSerializer

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        schema["properties"]["params"] = PARAMS_SCHEMA
        schema["additionalProperties"] = {
            "type": "string",
            "maxLength": ADDRESS_MAX_LENGTH,
            "description": "The workflow's own inputs (GET /workflows, `inputs`), e.g. input_image: an URL, "
                           "or file:<file_id> (POST /files).",
        }
        return schema


# GET /workflows answers workflows.selectors' dicts; these say their shape in the schema.
class WorkflowStepSerializer(serializers.Serializer):
    position = serializers.IntegerField()
    name = serializers.CharField()
    default_model = serializers.CharField()


class WorkflowSerializer(serializers.Serializer):
    id = serializers.CharField()
    workflow_id = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    inputs = serializers.ListField(child=serializers.CharField(), help_text="Fields POST .../execute needs.")
    required_models = serializers.ListField(child=serializers.CharField())
    steps = WorkflowStepSerializer(many=True)


@extend_schema(
    summary="Workflow definitions",
    parameters=[RETRY_AFTER],
    responses={200: WorkflowSerializer(many=True), **COMMON_ERRORS},
)
class WorkflowListView(APIView):
    def get(self, request):
        return Response(workflow_list_as_dicts())


@extend_schema(
    summary="Start a workflow",
    description="Queue a workflow job: it holds every model its steps use. Rate-limited per user (429).",
    parameters=[
        OpenApiParameter(
            "workflow_id",
            OpenApiTypes.STR,
            OpenApiParameter.PATH,
            examples=[OpenApiExample("The seeded workflow", value="knight-style-img-to-video")],
        ),
        IDEMPOTENCY_KEY,
        PREFER_WAIT,
        RETRY_AFTER,
        PREFERENCE_APPLIED,
    ],
    examples=[
        OpenApiExample(
            "Knight style",
            value={"input_image": "https://example.com/portrait.png", "prompt": "at dawn"},
            request_only=True,
        )
    ],
    # Fields beyond prompt, params and priority are the workflow's own inputs (WorkflowExecuteSchema).
    request=WorkflowExecuteSerializer(input_names=[]),
    responses={**SUBMIT_RESPONSES, **NOT_FOUND},
)
class WorkflowExecuteView(PreferWaitMixin, SubmitThrottledMixin, APIView):
    wait_methods = {"POST"}

    def post(self, request, workflow_id: str):
        workflow = workflow_get(workflow_id=workflow_id)  # an unknown workflow is a 404 before any body check
        serializer = WorkflowExecuteSerializer(data=request.data, input_names=workflow.inputs)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        inputs = {name: data.pop(name) for name in workflow.inputs if name in data}
        submit = partial(workflow_execute, workflow_id=workflow_id, inputs=inputs, **data)
        return submit_response(request, serializer.validated_data, submit)
