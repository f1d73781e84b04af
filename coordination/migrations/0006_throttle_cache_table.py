"""The database cache table the submission throttle counts in (settings.CACHES["throttle"]).

`createcachetable` made part of `migrate`, so every environment that migrates (make run, the test
database, a deploy) has it. It creates only tables that do not exist yet.
"""

from django.conf import settings
from django.core.management import call_command
from django.db import migrations


def create_cache_tables(apps, schema_editor):
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


def drop_cache_tables(apps, schema_editor):
    for cache in settings.CACHES.values():
        if cache["BACKEND"] == "django.core.cache.backends.db.DatabaseCache":
            schema_editor.execute(f"DROP TABLE IF EXISTS {schema_editor.quote_name(cache['LOCATION'])}")


class Migration(migrations.Migration):
    dependencies = [("coordination", "0005_idempotency_keys")]

    operations = [migrations.RunPython(create_cache_tables, drop_cache_tables)]
