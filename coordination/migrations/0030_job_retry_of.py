"""Job.retry_of (a retry's link to the ended job it was made from; `retried_as` the other way) and the
audit event `resubmitted`."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('coordination', '0029_input_files'),
    ]

    operations = [
        migrations.AddField(
            model_name='job',
            name='retry_of',
            field=models.ForeignKey(blank=True, help_text='The job this one retries (made with its request).', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='retried_as', to='coordination.job'),
        ),
        migrations.AlterField(
            model_name='jobqueuelog',
            name='event_type',
            field=models.CharField(choices=[('submitted', 'Submitted'), ('blocked', 'Blocked'), ('reblocked', 'Reblocked'), ('started', 'Started'), ('claimed', 'Claimed'), ('step_started', 'Step Started'), ('completed', 'Completed'), ('failed', 'Failed'), ('cancelled', 'Cancelled'), ('refused', 'Refused'), ('retried', 'Retried'), ('cancel_requested', 'Cancel Requested'), ('lease_expired', 'Lease Expired'), ('timed_out', 'Timed Out'), ('requeued', 'Task resent'), ('stale_cleared', 'Stale Cleared'), ('state_reset', 'State Reset'), ('pruned', 'Pruned'), ('model_paused', 'Model Paused'), ('model_resumed', 'Model Resumed'), ('model_changed', 'Model Changed'), ('group_changed', 'Group Changed'), ('expired', 'Expired'), ('at_provider', 'At Provider'), ('adopted', 'Adopted'), ('workflow_changed', 'Workflow Changed'), ('priority_changed', 'Priority Changed'), ('dispatched', 'Dispatched'), ('reconciled', 'Reconciled'), ('resubmitted', 'Resubmitted')], max_length=20),
        ),
    ]
