"""The copier's claim takes its due files once, whatever the join's plan (coordination/outputs/store.py)."""

from django.db import migrations


def install(apps, schema_editor):
    from coordination.outputs.store import install as install_copier

    install_copier(schema_editor)


class Migration(migrations.Migration):

    dependencies = [
        ('coordination', '0043_webhooks_claim_planned_once'),
    ]

    operations = [
        migrations.RunPython(install, migrations.RunPython.noop),
    ]
