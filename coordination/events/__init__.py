"""What clients hear while they wait: live event streams and answers that wait (`Prefer: wait`).

- triggers.py: the database writes a `job_events` row with every change a client can see, in the
  transaction of the change (and, on PostgreSQL, NOTIFYs the web processes).
- feed.py: reading those rows, and a job as it was at one of them.
- hub.py: one listener per web process (PostgreSQL LISTEN) that reads new rows
  once and hands them to every stream and waiting answer of that process.
- streams.py: the Server-Sent Events streams and the waits, as asynchronous code that holds no thread.
"""
