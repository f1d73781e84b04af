"""jq_snapshot takes the coordinator lock itself (the slot rows, FOR UPDATE, then the read), so a hot
transition is two statements: this read and the write (coordination/queue/snapshot.py). It no longer
takes the transition's instant, which is read after the lock (the jobs' times follow the lock's
order): the jobs with the earliest deadlines are read, and the coordinator sees which have passed.
Its first argument changed type, so the old function is dropped and made again. And jq_apply finds
each row it writes by its key's index, never by a scan of the table (coordination/writes.py)."""

from django.db import migrations


def install(apps, schema_editor):
    from coordination.queue.snapshot import install as install_snapshot
    from coordination.writes import install as install_apply

    with schema_editor.connection.cursor() as cursor:
        cursor.execute("DROP FUNCTION IF EXISTS jq_snapshot(timestamptz, int, uuid[], text[], int[], int[], bigint, text[], int)")
    install_snapshot(schema_editor)
    install_apply(schema_editor)


class Migration(migrations.Migration):

    dependencies = [
        ('coordination', '0033_deliveries_noted'),
    ]

    operations = [
        migrations.RunPython(install, migrations.RunPython.noop),
    ]
