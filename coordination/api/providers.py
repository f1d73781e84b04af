"""POST /providers/{model}/callback and POST /providers/leonardo/webhook: a provider tells us about a job
(coordination/providers/callbacks.py)."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from coordination.api.views import COMMON_ERRORS, _error
from coordination.providers.callbacks import callback_receive, key_webhook_receive
from coordination.runners.adapters import CallbackRefused


class CallbackAnswerSerializer(serializers.Serializer):
    message = serializers.CharField()
    job_id = serializers.UUIDField(allow_null=True)


class CallbackAuthentication:
    """Names the scheme in 401s (the callback's own check is the model's secret, not a user)."""

    def authenticate(self, request):
        return None

    def authenticate_header(self, request):
        return 'Bearer realm="provider callbacks"'


@extend_schema(
    summary="A provider's callback",
    description="A provider's webhook about a job of this model, checked the provider's way (docs/providers.md): "
    "Replicate's Standard Webhooks signature, fal's ED25519 signature, RunPod's token in the URL we gave it, "
    "or, for the generic protocol, `{\"id\": <provider job id>, \"status\": ...}` with the model's secret "
    "(`Authorization: Bearer <secret>`, or `X-Signature: sha256=<hex HMAC-SHA256 of the body>`). "
    "A repeated callback changes nothing.",
    auth=[],
    parameters=[OpenApiParameter("model", OpenApiTypes.STR, OpenApiParameter.PATH)],
    request=OpenApiTypes.OBJECT,
    responses={
        200: OpenApiResponse(CallbackAnswerSerializer, description="Recorded (or already recorded)."),
        202: OpenApiResponse(CallbackAnswerSerializer, description="Not an end: noted."),
        400: _error("The body is not JSON, or names no provider job."),
        401: _error("No secret, or a wrong one: nothing changed."),
        404: _error("No job of this model is at the provider under that id."),
        503: COMMON_ERRORS[503],
    },
)
class ProviderCallbackView(APIView):
    authentication_classes = [CallbackAuthentication]
    permission_classes = [AllowAny]

    def post(self, request, model: str):
        body = request.body  # the raw bytes, as signed (read before anything parses them)
        return _answer(lambda: callback_receive(model_name=model, body=body, headers=request.headers,
                                                query=request.query_params))


@extend_schema(
    summary="Leonardo's webhook",
    description="Leonardo calls back once per API key (set at Leonardo: this URL and a webhook API key), "
    "with `Authorization: Bearer <webhook API key>`: checked against the key of the model whose job the "
    "generation is (its callback_secret_env), then confirmed by asking Leonardo. A repeated callback changes nothing.",
    auth=[],
    request=OpenApiTypes.OBJECT,
    responses={
        200: OpenApiResponse(CallbackAnswerSerializer, description="Recorded (or already recorded)."),
        202: OpenApiResponse(CallbackAnswerSerializer, description="Not an end: noted."),
        400: _error("The body is not JSON, or names no generation."),
        401: _error("No key, a wrong one, or no job of ours: nothing changed."),
        503: COMMON_ERRORS[503],
    },
)
class LeonardoWebhookView(APIView):
    authentication_classes = [CallbackAuthentication]
    permission_classes = [AllowAny]

    def post(self, request):
        body = request.body
        return _answer(lambda: key_webhook_receive(kind="leonardo", body=body, headers=request.headers))


def _answer(receive) -> Response:
    """What `receive()` heard, as the provider is answered; a refused caller is a 401 (nothing changed)."""
    try:
        heard = receive()
    except CallbackRefused as refused:
        raise AuthenticationFailed(str(refused)) from None
    if heard.code >= 400:
        return Response({"error": heard.message, "code": "invalid" if heard.code == 400 else "not_found"}, status=heard.code)
    return Response({"message": heard.message, "job_id": heard.job_id}, status=heard.code)
