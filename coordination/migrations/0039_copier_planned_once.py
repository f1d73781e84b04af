"""The copier's claim and record are functions, planned once per connection (coordination/outputs/store.py)."""

from django.db import migrations


def install(apps, schema_editor):
    from coordination.outputs.store import install as install_copier

    install_copier(schema_editor)


class Migration(migrations.Migration):

    dependencies = [
        ('coordination', '0038_writes_written_out'),
    ]

    operations = [
        migrations.RunPython(install, migrations.RunPython.noop),
    ]
