"""The coordinator's hot transitions as PL/pgSQL functions (coordination/fastpath/schema.sql).

PostgreSQL only; on SQLite this does nothing and the Python path decides. A later change to
schema.sql comes with a migration that runs install() again (the functions are CREATE OR REPLACE).
"""

from django.db import migrations


def install(apps, schema_editor):
    from coordination.fastpath import install as install_functions

    install_functions(schema_editor)


class Migration(migrations.Migration):
    dependencies = [("coordination", "0012_catalog_edit_events")]

    operations = [migrations.RunPython(install, migrations.RunPython.noop)]
