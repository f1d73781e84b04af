"""The embedded PostgreSQL's life: started once, found by the next process, stopped only by its starter."""

import subprocess
import sys

import psycopg
import pytest

from jobqueue_site import embedded_postgres

ROOT = embedded_postgres.PGDATA.parent


@pytest.fixture
def pgdata(tmp_path, monkeypatch):
    """A server of the test's own, in a folder of its own (not the checkout's .pgdata)."""
    folder = tmp_path / "pgdata"
    monkeypatch.setattr(embedded_postgres, "PGDATA", folder)
    monkeypatch.setattr(embedded_postgres, "started_here", False)
    yield folder
    embedded_postgres.stop()


def test_the_first_use_starts_it_with_our_database_and_the_second_finds_it_up(pgdata):
    url = embedded_postgres.database_url()

    assert embedded_postgres.started_here
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT current_database(), current_setting('listen_addresses')").fetchone() == (
            embedded_postgres.DATABASE, "",  # a Unix socket only: no TCP port to clash with
        )
    assert embedded_postgres.start() is False  # already up: not ours to start, nor to stop
    assert embedded_postgres.database_url() == url


def test_stop_stops_it_and_the_data_stays_for_the_next_start(pgdata):
    with psycopg.connect(embedded_postgres.database_url(), autocommit=True) as connection:
        connection.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    embedded_postgres.stop()

    assert not (pgdata / "postmaster.pid").exists()
    assert embedded_postgres.start() is True
    with psycopg.connect(embedded_postgres.database_url()) as connection:
        assert connection.execute("SELECT x FROM kept").fetchone() == (42,)


def test_the_command_line_says_whether_it_started_it(pgdata):
    def command(*args: str) -> str:
        # The module's own command line, pointed at the test's folder the same way.
        code = ("import sys; from pathlib import Path; from jobqueue_site import embedded_postgres as e; "
                f"e.PGDATA = Path({str(pgdata)!r}); sys.exit(e.main(['embedded_postgres', *sys.argv[1:]]))")
        return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, check=True, capture_output=True,
                              text=True, timeout=60).stdout.strip()

    assert command("start") == "started"
    assert command("start") == "running"
    assert command("url").endswith(f"/{embedded_postgres.DATABASE}")
    command("stop")
    assert not (pgdata / "postmaster.pid").exists()
