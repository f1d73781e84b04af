"""jq_apply is planned as the copier's functions are, never compiled (coordination/writes.py, PLANNED_ONCE)."""

from django.db import migrations


def install(apps, schema_editor):
    from coordination.writes import install as install_apply

    install_apply(schema_editor)


class Migration(migrations.Migration):

    dependencies = [
        ('coordination', '0040_snapshot_rows_as_json'),
    ]

    operations = [
        migrations.RunPython(install, migrations.RunPython.noop),
    ]
