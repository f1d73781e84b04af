"""Installed the coordinator's hot transitions as PL/pgSQL functions (the SQL fast path). The
coordinator decides every transition since, and migration 0036 drops them: nothing is left to do here."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("coordination", "0012_catalog_edit_events")]

    operations = []
