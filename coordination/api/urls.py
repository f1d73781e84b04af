from django.urls import path

from coordination.api import events, files, providers, views

# No trailing slashes: the usage guide's clients call POST /jobs. GET /workflows and POST
# /workflows/{id}/execute are the workflows app's (workflows/api.py, routed in jobqueue_site/urls.py).
urlpatterns = [
    # POST /jobs and GET /jobs/{id} may hold their answer (Prefer: wait=N) without holding a thread.
    path("jobs", events.waitable(views.JobListCreateView.as_view()), name="job-list"),
    # Before jobs/<job_id>, which would take "batch" for a job id.
    path("jobs/batch", views.JobBatchView.as_view(), name="job-batch"),
    path("jobs/<str:job_id>", events.waitable(views.JobDetailView.as_view()),
         name="job-detail"),
    path("jobs/<str:job_id>/events", events.JobEventsView.as_view(), name="job-events"),
    path("jobs/<str:job_id>/files/<int:n>", files.JobFileView.as_view(), name="job-file"),
    path("files", files.InputFileListView.as_view(), name="input-file-list"),
    path("files/<uuid:file_id>", files.InputFileView.as_view(), name="input-file"),
    path("jobs/<str:job_id>/cancel", views.JobCancelView.as_view(), name="job-cancel"),
    path("jobs/<str:job_id>/retry", views.JobRetryView.as_view(), name="job-retry"),
    path("jobs/<str:job_id>/webhooks", views.JobWebhooksView.as_view(), name="job-webhooks"),
    path("webhooks/secret", views.WebhookSecretView.as_view(), name="webhook-secret"),
    path("webhooks/secret/rotate", views.WebhookSecretRotateView.as_view(), name="webhook-secret-rotate"),
    path("queue/status", views.QueueStatusView.as_view(), name="queue-status"),
    path("queue/events", events.QueueEventsView.as_view(), name="queue-events"),
    path("health", views.HealthView.as_view(), name="health"),
    path("models", views.ModelListView.as_view(), name="model-list"),
    # A model's name may hold a slash (minimax/video-01): /models/minimax/video-01 as written.
    path("models/<path:name>", views.ModelDetailView.as_view(), name="model-detail"),
    # Leonardo's webhook is set once per API key, not per job: one route for the provider.
    path("providers/leonardo/webhook", providers.LeonardoWebhookView.as_view(), name="leonardo-webhook"),
    # A model's name may hold a slash (minimax/video-01).
    path("providers/<path:model>/callback", providers.ProviderCallbackView.as_view(), name="provider-callback"),
]
