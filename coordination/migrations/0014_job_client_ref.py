"""Job.client_ref: the client's own reference for a job of a batch (POST /jobs/batch).

The fast path's insert (jq_admit in coordination/fastpath/schema.sql) names the jobs columns, this
one included, so its functions are installed again once the column exists.
"""

from django.db import migrations, models


def install(apps, schema_editor):
    from coordination.fastpath import install as install_functions

    install_functions(schema_editor)


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
        migrations.RunPython(install, migrations.RunPython.noop),
    ]
