from django.core.management.base import BaseCommand

from coordination.maintenance import schedules_ensure, slots_sync


class Command(BaseCommand):
    help = "Bring slots in step with COORDINATOR_MAX_ACTIVE_JOBS and create the schedules; run at every start."

    def handle(self, *args, **options):
        report = slots_sync()
        schedules_ensure()
        self.stdout.write(
            f"{report['slots']} slot(s); removed {report['removed']} surplus free slot row(s)"
            f"{'; ' + str(report['busy_beyond']) + ' surplus slot(s) still busy' if report['busy_beyond'] else ''}; "
            f"{report['pending']} job(s) waiting; started {report['started']}."
        )
