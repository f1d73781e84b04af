from django.contrib import admin
from django.http import HttpResponse
from django.urls import include, path
from django.views.decorators.cache import cache_control
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from coordination.api.events import waitable
from coordination.metrics import metrics_view
from workflows.api import WorkflowExecuteView, WorkflowListView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("coordination.api.urls")),
    # The workflows app's operations, on the coordinator's API (workflows imports coordination, not the reverse).
    path("workflows", WorkflowListView.as_view(), name="workflow-list"),
    path("workflows/<str:workflow_id>/execute", waitable(WorkflowExecuteView.as_view()),
         name="workflow-execute"),
    # Prometheus text format, computed from the database on each scrape (bearer token or staff session).
    path("metrics", metrics_view, name="metrics"),
    # OpenAPI 3 (YAML; JSON with ?format=json or Accept: application/json) and Swagger UI on it.
    path("schema", SpectacularAPIView.as_view(), name="schema"),
    path("docs", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    # Browsers ask for it on every admin page; an empty answer keeps "Not Found" warnings out of the log.
    path("favicon.ico", cache_control(max_age=86400)(lambda request: HttpResponse(status=204))),
]

handler400 = "coordination.api.errors.bad_request_json"
handler404 = "coordination.api.errors.not_found_json"
handler500 = "coordination.api.errors.server_error_json"
