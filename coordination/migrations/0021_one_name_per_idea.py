"""One name per idea (issue 24).

- One per-model deadline: the catalog's max_runtime_seconds (the reaper's limit) is merged into
  timeout_seconds (the http runner's), which becomes nullable (empty: COORDINATOR_JOB_TIMEOUT).
  A row keeps the deadline its jobs had: on an http model the smaller of the two (max_runtime_seconds
  empty meant COORDINATOR_JOB_TIMEOUT, never smaller than what the runner already stopped at); on a
  simulated model timeout_seconds bounded nothing, so max_runtime_seconds is taken as it was (empty
  stays empty). The fast path's SQL reads neither column: nothing to install again.
- job_queue_log's "requeued" rows are labelled "Task resent" (choices only: no SQL).
"""

from django.db import migrations, models


def merged_timeout(*, runner: str, timeout_seconds: int | None, max_runtime_seconds: int | None) -> int | None:
    """The deadline a row keeps (a pure function: tests hold it)."""
    if runner != "http":
        return max_runtime_seconds
    set_ = [seconds for seconds in (timeout_seconds, max_runtime_seconds) if seconds is not None]
    return min(set_, default=None)


def timeouts_merge(apps, schema_editor):
    CatalogModel = apps.get_model("coordination", "CatalogModel")
    for model in CatalogModel.objects.all():
        merged = merged_timeout(runner=model.runner, timeout_seconds=model.timeout_seconds,
                                max_runtime_seconds=model.max_runtime_seconds)
        if merged != model.timeout_seconds:
            CatalogModel.objects.filter(pk=model.pk).update(timeout_seconds=merged)


def timeouts_split(apps, schema_editor):
    """Back: both columns say the one deadline (an empty one: the runner's old default, 600 s)."""
    CatalogModel = apps.get_model("coordination", "CatalogModel")
    for model in CatalogModel.objects.all():
        CatalogModel.objects.filter(pk=model.pk).update(
            max_runtime_seconds=model.timeout_seconds, timeout_seconds=model.timeout_seconds or 600,
        )


class Migration(migrations.Migration):

    dependencies = [
        ('coordination', '0020_provider_runs'),
    ]

    operations = [
        migrations.AlterField(
            model_name="catalogmodel",
            name="timeout_seconds",
            field=models.PositiveIntegerField(
                blank=True, null=True,
                help_text="How long one attempt of a job on this model may run, from its start; longer, it fails as "
                          "timed out (empty: COORDINATOR_JOB_TIMEOUT, which is also the most it may be).",
            ),
        ),
        migrations.RunPython(timeouts_merge, timeouts_split),
        migrations.RemoveField(model_name="catalogmodel", name="max_runtime_seconds"),
        migrations.AlterField(
            model_name='jobqueuelog',
            name='event_type',
            field=models.CharField(choices=[('submitted', 'Submitted'), ('blocked', 'Blocked'), ('reblocked', 'Reblocked'), ('started', 'Started'), ('claimed', 'Claimed'), ('step_started', 'Step Started'), ('completed', 'Completed'), ('failed', 'Failed'), ('cancelled', 'Cancelled'), ('refused', 'Refused'), ('retried', 'Retried'), ('cancel_requested', 'Cancel Requested'), ('lease_expired', 'Lease Expired'), ('timed_out', 'Timed Out'), ('requeued', 'Task resent'), ('stale_cleared', 'Stale Cleared'), ('state_reset', 'State Reset'), ('pruned', 'Pruned'), ('model_paused', 'Model Paused'), ('model_resumed', 'Model Resumed'), ('model_changed', 'Model Changed'), ('group_changed', 'Group Changed'), ('expired', 'Expired'), ('at_provider', 'At Provider'), ('adopted', 'Adopted'), ('workflow_changed', 'Workflow Changed'), ('priority_changed', 'Priority Changed'), ('dispatched', 'Dispatched'), ('reconciled', 'Reconciled')], max_length=20),
        ),
    ]
