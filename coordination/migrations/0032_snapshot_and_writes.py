"""The coordinator's two statements after its lock: jq_snapshot, what a transition decides from
(coordination/queue/snapshot.py), and jq_apply, what it decided (coordination/writes.py): inserts,
updates and deletes of its tables, in order, each set-based."""

from django.db import migrations


def install(apps, schema_editor):
    from coordination.queue.snapshot import install as install_snapshot
    from coordination.writes import install as install_apply

    install_snapshot(schema_editor)
    install_apply(schema_editor)


class Migration(migrations.Migration):

    dependencies = [
        ('coordination', '0031_console_history_indexes'),
    ]

    operations = [
        migrations.RunPython(install, migrations.RunPython.noop),
    ]
