"""The webhook claim reads each delivery's job once (coordination/webhooks.py)."""

from django.db import migrations


def install(apps, schema_editor):
    from coordination.webhooks import install as install_claim

    install_claim(schema_editor)


class Migration(migrations.Migration):

    dependencies = [
        ('coordination', '0045_webhooks_claim_in_order'),
    ]

    operations = [
        migrations.RunPython(install, migrations.RunPython.noop),
    ]
