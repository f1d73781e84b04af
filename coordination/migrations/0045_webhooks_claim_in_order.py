"""The webhook claim reads the due deliveries in the order it claims them and finds each one's job's
earliest pending delivery by an index: its cost is its batch's, not the backlog's
(coordination/webhooks.py)."""

from django.db import migrations, models


def install(apps, schema_editor):
    from coordination.webhooks import install as install_claim

    install_claim(schema_editor)


class Migration(migrations.Migration):

    dependencies = [
        ('coordination', '0044_copier_claim_taken_once'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='webhookdelivery',
            name='webhook_deliveries_due_idx',
        ),
        migrations.AddIndex(
            model_name='webhookdelivery',
            index=models.Index(condition=models.Q(('state', 'pending')), fields=['next_attempt_at', 'id'], name='webhook_deliveries_due_idx'),
        ),
        migrations.AddIndex(
            model_name='webhookdelivery',
            index=models.Index(condition=models.Q(('state', 'pending')), fields=['job', 'id'], name='webhook_deliveries_pending_idx'),
        ),
        migrations.RunPython(install, migrations.RunPython.noop),
    ]
