import os
import shutil

from django.core.management.commands import dbshell

from jobqueue_site import embedded_postgres


class Command(dbshell.Command):
    help = dbshell.Command.help + " Uses the embedded PostgreSQL's own psql when none is on PATH."

    def handle(self, **options):
        if shutil.which("psql") is None:
            os.environ["PATH"] = os.pathsep.join([str(embedded_postgres.bin_dir()), os.environ.get("PATH", "")])
        return super().handle(**options)
