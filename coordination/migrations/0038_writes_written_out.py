"""jq_apply writes the coordinator's own tables with statements written out, planned once per
connection, instead of building and preparing each (coordination/writes.py)."""

from django.db import migrations


def install(apps, schema_editor):
    from coordination.writes import install as install_apply

    install_apply(schema_editor)


class Migration(migrations.Migration):

    dependencies = [
        ('coordination', '0037_job_files_found_by_job'),
    ]

    operations = [
        migrations.RunPython(install, migrations.RunPython.noop),
    ]
