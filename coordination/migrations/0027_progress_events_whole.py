from django.db import migrations


def install(apps, schema_editor):
    # A job.progress event's state now carries the job's whole at_provider (coordination/events/triggers.py).
    from coordination.events.triggers import install as install_triggers

    install_triggers(schema_editor)


class Migration(migrations.Migration):

    dependencies = [
        ('coordination', '0026_provider_field_help'),
    ]

    operations = [
        migrations.RunPython(install, migrations.RunPython.noop),
    ]
