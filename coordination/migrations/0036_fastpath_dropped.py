"""The SQL fast path is gone: the coordinator (coordination/queue) decides every transition, so the
PL/pgSQL functions migration 0013 installed (jq_submit_many, jq_finish and their helpers) are dropped,
whatever their arguments were (four more that earlier versions of it made are in the list too), and
so is the index only its policy gate read (live jobs that want webhooks), which every change of such
a job kept up for nothing. A process of an earlier release still running calls them: stop them all
before migrating (docs/operating.md, upgrading)."""

from django.db import migrations

FUNCTIONS = (
    "jq_admit", "jq_ahead_global", "jq_ahead_in", "jq_any_conflict", "jq_assess", "jq_block", "jq_capacity",
    "jq_count_pending", "jq_dispatch", "jq_event", "jq_finish", "jq_free_slot", "jq_holder", "jq_in_use",
    "jq_longest_running", "jq_next_startable", "jq_paused_among", "jq_paused_any", "jq_pending_count",
    "jq_policies_in_use", "jq_predecessor", "jq_recount_pending", "jq_running_count", "jq_running_entry",
    "jq_settle_after", "jq_start", "jq_submit_many",
    # Made by earlier versions of the fast path and dropped by reinstalls those migrations no longer run.
    "jq_submit", "jq_running_load", "jq_running_add", "jq_running_remove",
)

DROP_SQL = """
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
             WHERE p.proname = ANY(%s)
               AND p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) LOOP
        EXECUTE 'DROP FUNCTION ' || f;
    END LOOP;
END $$;
"""


def drop(apps, schema_editor):
    names = "ARRAY[" + ", ".join(f"'{name}'" for name in FUNCTIONS) + "]"
    schema_editor.execute(DROP_SQL % names)


class Migration(migrations.Migration):

    dependencies = [
        ('coordination', '0035_prepared_writes_and_waiters_by_index'),
    ]

    operations = [
        migrations.RunPython(drop, migrations.RunPython.noop),
        migrations.RemoveIndex(model_name='job', name='jobs_webhook_live_idx'),
    ]
