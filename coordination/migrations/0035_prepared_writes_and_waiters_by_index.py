"""jq_apply prepares each of its statements once per connection instead of planning it at
every transition (coordination/writes.py), and jq_snapshot finds the jobs waiting on one by the index
of blocked_by_job_id whatever its plan saw when it was made (coordination/queue/snapshot.py)."""

from django.db import migrations


def install(apps, schema_editor):
    from coordination.queue.snapshot import install as install_snapshot
    from coordination.writes import install as install_apply

    install_snapshot(schema_editor)
    install_apply(schema_editor)


class Migration(migrations.Migration):

    dependencies = [
        ('coordination', '0034_snapshot_takes_the_lock'),
    ]

    operations = [
        migrations.RunPython(install, migrations.RunPython.noop),
    ]
