"""A copier records a copy only while the file is under the hold its claim took (coordination/outputs/store.py)."""

from django.db import migrations


def install(apps, schema_editor):
    from coordination.outputs.store import install as install_copier

    install_copier(schema_editor)


class Migration(migrations.Migration):

    dependencies = [
        ('coordination', '0041_apply_never_compiled'),
    ]

    operations = [
        migrations.RunPython(install, migrations.RunPython.noop),
    ]
