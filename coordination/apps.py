from django.apps import AppConfig


class CoordinationConfig(AppConfig):
    name = "coordination"
    verbose_name = "Job queue coordination"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported once the apps are ready: this module is loaded before the models are.
        from django_q.signals import post_spawn

        # Each worker process runs its jobs on threads, and the reaper every COORDINATOR_REAPER_SECONDS
        # (django-q2's scheduler fires about once a minute; passes are deduplicated through the cache).
        post_spawn.connect(_worker_process_ready, dispatch_uid="coordination-worker-process")


def _worker_process_ready(**kwargs) -> None:
    # Imported in a worker process only: a web process never loads the worker's code.
    from coordination.tasks import worker_process_ready

    worker_process_ready(**kwargs)
