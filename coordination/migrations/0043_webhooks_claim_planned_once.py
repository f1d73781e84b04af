"""The webhook sender's claim is a function, planned once per connection without bitmap scans
(coordination/webhooks.py)."""

from django.db import migrations


def install(apps, schema_editor):
    from coordination.webhooks import install as install_claim

    install_claim(schema_editor)


class Migration(migrations.Migration):

    dependencies = [
        ('coordination', '0042_copier_records_under_its_hold'),
    ]

    operations = [
        migrations.RunPython(install, migrations.RunPython.noop),
    ]
