"""The jobs trigger finds a job's files by job_id alone: a completion no longer reads every file still
being copied (coordination/events/triggers.py, _FILES_COUNTED)."""

from django.db import migrations


def install(apps, schema_editor):
    from coordination.events.triggers import install as install_triggers

    install_triggers(schema_editor)


class Migration(migrations.Migration):

    dependencies = [
        ('coordination', '0036_fastpath_dropped'),
    ]

    operations = [
        migrations.RunPython(install, migrations.RunPython.noop),
    ]
