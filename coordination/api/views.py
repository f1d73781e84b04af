"""Thin views: validate → call a service or selector → serialize."""

from django.db import connection
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.generics import ListAPIView
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from coordination import selectors, services
from coordination.api.serializers import JobSerializer, JobSubmitSerializer, WorkflowExecuteSerializer
from coordination.models import Job


def _job_response(job: Job, code: int) -> Response:
    job = Job.objects.select_related("workflow_execution").get(pk=job.pk)
    return Response(JobSerializer(job).data, status=code)


class JobListCreateView(ListAPIView):
    serializer_class = JobSerializer

    def get_queryset(self):
        params = self.request.query_params
        for name, choices in (("status", Job.Status.values), ("kind", Job.Kind.values)):
            value = params.get(name)
            if value and value not in choices:
                raise ValidationError({name: [f"Unknown {name} '{value}'; use one of: {', '.join(choices)}."]})
        return selectors.job_list(
            user=self.request.user, status=params.get("status"), kind=params.get("kind"), model=params.get("model")
        )

    def post(self, request):
        serializer = JobSubmitSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        job = services.job_submit(owner=request.user, **serializer.validated_data)
        return _job_response(job, status.HTTP_201_CREATED)


class JobDetailView(APIView):
    def get(self, request, job_id: str):
        job = selectors.job_get(user=request.user, job_id=job_id)
        return Response(JobSerializer(job, context={"detail": True}).data)


class JobCancelView(APIView):
    def post(self, request, job_id: str):
        job = selectors.job_get(user=request.user, job_id=job_id)
        # Staff may cancel anyone's job: the job's `error` says who did, not "its owner".
        if job.owner_id == request.user.pk:
            reason = "Cancelled by its owner"
        else:
            reason = f"Cancelled by {request.user.username} (staff)"
        job = services.job_cancel(job_id=job.job_id, user=request.user, reason=reason)
        return _job_response(job, status.HTTP_200_OK)


class WorkflowListView(APIView):
    def get(self, request):
        from workflows.selectors import workflow_list_as_dicts

        return Response(workflow_list_as_dicts())


class WorkflowExecuteView(APIView):
    def post(self, request, workflow_id: str):
        from workflows.services import workflow_execute, workflow_get

        workflow = workflow_get(workflow_id=workflow_id)  # an unknown workflow is a 404 before any body check
        serializer = WorkflowExecuteSerializer(data=request.data, input_names=workflow.inputs)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        inputs = {name: data.pop(name) for name in workflow.inputs if name in data}
        job = workflow_execute(owner=request.user, workflow_id=workflow_id, inputs=inputs, **data)
        return _job_response(job, status.HTTP_201_CREATED)


class QueueStatusView(APIView):
    def get(self, request):
        return Response(selectors.queue_status())


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
