from django.core.management.base import BaseCommand

from coordination.maintenance import SCHEDULES, schedules_ensure


class Command(BaseCommand):
    help = "Create (or repair) the coordinator's django-q2 schedules; safe to run at every start."

    def handle(self, *args, **options):
        schedules_ensure()
        self.stdout.write(f"Schedules in place: {', '.join(spec['name'] for spec in SCHEDULES)}.")
