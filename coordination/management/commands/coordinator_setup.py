from django.core.management.base import BaseCommand

from coordination.maintenance import schedules_ensure, slots_sync


def mode_said(slots: int) -> str:
    """How many jobs may run at once and how to change it: `make run` says it before it serves, since
    serialized mode, the default, keeps even a job on an idle model waiting (the usage guide's Test 3)."""
    if slots == 1:
        return ("Serialized mode (COORDINATOR_MAX_ACTIVE_JOBS=1): one job at a time over all models, so a job on "
                "an idle model still waits for the running one. To run jobs on different models side by side, "
                "start with more slots, e.g. COORDINATOR_MAX_ACTIVE_JOBS=4 make run.")
    return (f"{slots} slots (COORDINATOR_MAX_ACTIVE_JOBS={slots}): up to {slots} jobs at once, each model within "
            f"its capacity. COORDINATOR_MAX_ACTIVE_JOBS=1 make run runs serialized: one job at a time.")


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
        self.stdout.write(mode_said(report["slots"]))
