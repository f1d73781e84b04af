from django.apps import AppConfig


class CoordinationConfig(AppConfig):
    name = "coordination"
    verbose_name = "Job queue coordination"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported once the apps are ready: this module is loaded before the models are.
        from django_q.signals import post_spawn

        from coordination.recovery import start_reaper_ticker

        # django-q2's scheduler fires about once a minute; each worker process also runs the reaper
        # every COORDINATOR_REAPER_SECONDS (passes are deduplicated through the cache).
        post_spawn.connect(start_reaper_ticker, dispatch_uid="coordination-reaper-ticker")
