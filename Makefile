# Two commands for a new user: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8000
export HOST PORT

.PHONY: run test install migrate bench docs clean

$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	touch $@

install: $(VENV)/.installed

migrate: install
	$(PY) manage.py migrate --noinput

# Migrates, then the web server (gunicorn) and one worker (qcluster) in the foreground; Ctrl-C stops
# both. Without DATABASE_URL, on the embedded PostgreSQL (.pgdata/), which stops with them.
run: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" LOG_FILE="$${LOG_FILE-worker.log}" bin/run

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# The benchmark (docs/performance.md): needs PostgreSQL; creates and drops its own database.
bench: install
	$(PY) bench/run.py $(BENCH_ARGS)

# The documentation (docs/, mkdocs.yml) into site/; --strict: a broken link or anchor fails the build.
docs: install
	$(PY) -m mkdocs build --strict --site-dir site

# Leaves .pgdata/ (the embedded database's data) alone.
clean:
	rm -rf $(VENV) staticfiles site
