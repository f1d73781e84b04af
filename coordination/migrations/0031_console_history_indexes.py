# The console's recent history reads the jobs that started or ended lately (coordination/models.py,
# Job.Meta.indexes). Built CONCURRENTLY: on a large jobs table a plain CREATE INDEX would block every
# submit and report for as long as it takes.

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('coordination', '0030_job_retry_of'),
    ]

    operations = [
        AddIndexConcurrently(
            model_name='job',
            index=models.Index(condition=models.Q(('started_at__isnull', False)), fields=['started_at'], name='jobs_started_idx'),
        ),
        AddIndexConcurrently(
            model_name='job',
            index=models.Index(condition=models.Q(('completed_at__isnull', False)), fields=['completed_at'], name='jobs_completed_idx'),
        ),
    ]
