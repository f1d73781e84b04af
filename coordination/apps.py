from django.apps import AppConfig
from django.db.models.signals import post_migrate


class CoordinationConfig(AppConfig):
    name = "coordination"
    verbose_name = "Job queue coordination"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_q.signals import post_spawn

        from coordination.recovery import start_reaper_ticker

        # django-q2's scheduler fires about once a minute; each worker process also runs the reaper
        # every COORDINATOR_REAPER_SECONDS (passes are deduplicated through the cache).
        post_spawn.connect(start_reaper_ticker, dispatch_uid="coordination-reaper-ticker")
        # On SQLite, a later migration that alters `jobs` rebuilds the table, and its triggers with it:
        # every migrate puts the job_events triggers back (the statements replace what is there).
        post_migrate.connect(_triggers_install, sender=self, dispatch_uid="coordination-job-event-triggers")


def _triggers_install(using, **kwargs) -> None:
    from django.db import connections

    from coordination.events.triggers import install

    connection = connections[using]
    with connection.schema_editor() as schema_editor:
        install(schema_editor)
