"""The jobs trigger notes, in a transaction-local setting, the jobs it made webhook deliveries for, and
jq_apply answers with them, so that only those have their sender woken after commit
(coordination/events/triggers.py, coordination/writes.py). jq_apply answered nothing before: it is
dropped and made again."""

from django.db import migrations


def install(apps, schema_editor):
    from coordination.events.triggers import install as install_triggers
    from coordination.writes import install as install_apply

    with schema_editor.connection.cursor() as cursor:
        cursor.execute("DROP FUNCTION IF EXISTS jq_apply(jsonb)")
    install_apply(schema_editor)
    install_triggers(schema_editor)


class Migration(migrations.Migration):

    dependencies = [
        ('coordination', '0032_snapshot_and_writes'),
    ]

    operations = [
        migrations.RunPython(install, migrations.RunPython.noop),
    ]
