"""Remote generation providers, and jobs that wait at one without holding a worker process.

- coordination/runners/client.py (beside the runners that use it): the provider protocol over HTTP
  (httpx), with its limits waited out (tenacity).
- store.py: the database side of jobs at a provider: recorded when the provider accepts them, watched
  and adopted by pollers under leases, ended through the coordinator with their outcome.
- poller.py: the one asynchronous poller each qcluster runs (coordination's `qcluster` command).
- callbacks.py: a provider's callback (POST /providers/{model}/callback), authenticated per model.
"""
