"""The files jobs produce, kept (docs/outputs.md). When a job completes, the database writes a
`job_files` row for each of its `result.files` (coordination/events/triggers.py); each qcluster's
copier (copier.py) streams them into Django's default storage (copy.py), beside the job slots: a job
is completed, and its models free, before its files are copied. links.py names them for the API
(`GET /jobs/{id}/files/{n}`, and links signed to serve one without a token); store.py is the
database side (claims, outcomes, the retention prune). inputs.py keeps a user's own files (POST
/files), which jobs name as `file:<id>` (coordination/services/input_files.py). steps.py keeps a
workflow step's files before its next step runs, which gets links to the copies.
"""
