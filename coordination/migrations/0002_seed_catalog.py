from django.db import migrations


def forwards(apps, schema_editor):
    from coordination.seed import seed_catalog

    seed_catalog(
        apps.get_model("coordination", "CatalogModel"),
        apps.get_model("workflows", "WorkflowDefinition"),
        apps.get_model("workflows", "WorkflowStep"),
        apps.get_model("coordination", "JobQueueState"),
    )


def schedules(apps, schema_editor):
    from coordination.maintenance import schedules_ensure

    schedules_ensure(apps.get_model("django_q", "Schedule"))


class Migration(migrations.Migration):
    dependencies = [
        ("coordination", "0001_initial"),
        ("workflows", "0001_initial"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [
        migrations.RunPython(forwards, migrations.RunPython.noop),
        migrations.RunPython(schedules, migrations.RunPython.noop),
    ]
