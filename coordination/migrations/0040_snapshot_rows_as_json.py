"""jq_snapshot sends its rows as JSON built straight from their columns (coordination/queue/snapshot.py)."""

from django.db import migrations


def install(apps, schema_editor):
    from coordination.queue.snapshot import install as install_snapshot

    install_snapshot(schema_editor)


class Migration(migrations.Migration):

    dependencies = [
        ('coordination', '0039_copier_planned_once'),
    ]

    operations = [
        migrations.RunPython(install, migrations.RunPython.noop),
    ]
