from django.core.management.base import BaseCommand, CommandError

from coordination.maintenance import PRUNE_BATCH, queue_log_prune


class Command(BaseCommand):
    help = "Delete job_queue_log rows older than --days (default 7), in batches."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=7, help="Keep this many days of events (default 7).")
        parser.add_argument("--dry-run", action="store_true", help="Only count what would be deleted.")
        parser.add_argument(
            "--batch-size", type=int, default=PRUNE_BATCH, help=f"Rows deleted per statement (default {PRUNE_BATCH})."
        )

    def handle(self, *args, days: int, dry_run: bool, batch_size: int, **options):
        if days < 0:
            raise CommandError("--days must be 0 or more.")
        if batch_size < 1:
            raise CommandError("--batch-size must be 1 or more.")
        count = queue_log_prune(days=days, dry_run=dry_run, batch_size=batch_size)
        verb = "Would delete" if dry_run else "Deleted"
        self.stdout.write(f"{verb} {count} job_queue_log row(s) older than {days} day(s).")
