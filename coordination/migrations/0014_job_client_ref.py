"""Job.client_ref: the client's own reference for a job of a batch (POST /jobs/batch)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("coordination", "0013_fastpath")]

    operations = [
        migrations.AddField(
            model_name="job",
            name="client_ref",
            field=models.CharField(
                blank=True, help_text="The client's reference, as it sent it.", max_length=200, null=True
            ),
        ),
    ]
