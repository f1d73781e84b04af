"""Jobs, slots, the model catalog and the audit trail.

Table and column names follow the usage guide verbatim (`jobs`, `job_queue_state`, `job_queue_log`,
`blocked_by_job_id`, ...) so that its SQL runs unchanged. State changes go through the coordinator
service (coordination/services/); a job's status is written only by coordination/transitions.py.
"""

import uuid
from datetime import datetime, timezone as dt_timezone

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from coordination import provider_catalog


def timeout_with_old_name(timeout_seconds: int | None, max_runtime_seconds: int | None) -> int | None:
    """The deadline where it may be named both ways (max_runtime_seconds is timeout_seconds' old name,
    merged into it by migration 0021): the smaller of the two given, as that migration merged them;
    None where neither is. The model's alias, the admin's form and the catalog API all say it so."""
    return min((seconds for seconds in (timeout_seconds, max_runtime_seconds) if seconds is not None), default=None)


def attempt_timeout(timeout_seconds: int | None) -> int:
    """How long one attempt may run, in seconds, for a model whose timeout_seconds is this:
    COORDINATOR_JOB_TIMEOUT when it is empty, and never more (django-q2's own timeout, which stops a
    worker's task, is derived from COORDINATOR_JOB_TIMEOUT)."""
    return min(timeout_seconds or settings.COORDINATOR_JOB_TIMEOUT, settings.COORDINATOR_JOB_TIMEOUT)


class MediaType(models.TextChoices):
    IMAGE = "image"
    VIDEO = "video"


class CatalogModel(models.Model):
    """An AI model jobs can ask for, and how many jobs may use it at once."""

    class Runner(models.TextChoices):
        SIMULATED = "simulated"
        HTTP = "http"

    class ProviderStyle(models.TextChoices):
        SYNC = "sync", "sync: answers the result at once"
        POLL = "poll", "poll: answers a job to poll"
        CALLBACK = "callback", "callback: answers a job, then calls us back"

    # The styles whose jobs leave the worker once the provider has accepted them (coordination/providers).
    DETACHED_STYLES = (ProviderStyle.POLL, ProviderStyle.CALLBACK)

    name = models.CharField(max_length=100, unique=True, help_text="As clients name it, e.g. motion-2.0-fast.")
    media_type = models.CharField(max_length=10, choices=MediaType.choices)
    runner = models.CharField(max_length=20, choices=Runner.choices, default=Runner.SIMULATED)
    capacity = models.PositiveSmallIntegerField(default=1, help_text="Jobs that may use this model at once.")
    enabled = models.BooleanField(default=True)
    # Set only through the console's pause/resume (operations.model_pause), under the coordinator
    # lock and audited: a paused model starts no new job; jobs running on it carry on.
    paused = models.BooleanField(default=False, help_text="Paused by an operator: its jobs wait with the reason \"Model paused\".")
    default_simulate_seconds = models.FloatField(
        default=5.0, help_text="How long the simulated runner takes when a job does not say."
    )
    description = models.TextField(blank=True, default="")
    max_attempts = models.PositiveSmallIntegerField(
        default=1, help_text="Runs a failing job may get in all (1: no retry)."
    )
    # Which provider runs its jobs (coordination/provider_catalog.py has each one's facts). On runner
    # http it is required ("generic" when a form leaves it empty); on the simulated runner it only
    # records where the model would run (the seed fills it for the guide's models), empty for none.
    provider = models.CharField(
        max_length=20, choices=provider_catalog.CHOICES, blank=True, default="",
        help_text="Where its jobs run: replicate, fal, runpod, leonardo, comfyui, or generic (our own protocol: "
                  "provider URL and style). On the simulated runner: only where it would run (empty: none).",
    )
    provider_model = models.CharField(
        max_length=200, blank=True, default="",
        help_text="The provider's own name for the model: Replicate owner/name[:version] or deployments/owner/name, "
                  "a fal app id (fal-ai/flux/dev), a RunPod endpoint id, a Leonardo modelId or MOTION2FAST.",
    )
    provider_base_url = models.URLField(
        blank=True, default="",
        help_text="Replaces the provider's public API (scheme and host; its paths follow), for a proxy, a region or "
                  "a test. Empty: the public API. ComfyUI: the server's address (required).",
    )
    provider_input = models.JSONField(
        blank=True, default=dict,
        help_text='How the job\'s fields reach the provider: {"rename": {"prompt": "text"}, "defaults": {"num_images": 1}}.',
    )
    provider_workflow = models.JSONField(
        blank=True, null=True,
        help_text='ComfyUI only: {"graph": {API-format graph}, "prompt": [node, input], "seed": [node, input], '
                  '"inputs": {name: [node, input]}, "params": {name: [node, input]}}.',
    )
    # The generic provider's address (coordination/runners/http.py); unused by the simulated runner.
    provider_url = models.URLField(blank=True, default="", help_text="Where the http runner POSTs a job.")
    # Only the variable's NAME is stored: the secret stays in the worker's environment, never in the database.
    credential_env = models.CharField(
        max_length=100,
        blank=True,
        default="",
        help_text="Name of the environment variable holding the provider's API key, where the qcluster runs (sent the "
                  "way the provider wants it: a Bearer token, fal's Key).",
    )
    provider_style = models.CharField(max_length=10, choices=ProviderStyle.choices, default=ProviderStyle.SYNC)
    poll_interval_seconds = models.FloatField(
        default=5.0, help_text="How often a job at the provider is polled (callback style: the safety net's interval is ten times this).",
    )
    # Only the variable's NAME is stored, as for credential_env.
    callback_secret_env = models.CharField(
        max_length=100, blank=True, default="",
        help_text="Name of the environment variable holding the provider's webhook secret, where the web server runs: "
                  "Replicate's whsec_..., Leonardo's webhook key, or a generic provider's (Authorization: Bearer <secret>, "
                  "or X-Signature: sha256=<HMAC of the body>). fal and RunPod need none.",
    )
    class LinePolicy(models.TextChoices):
        FIFO = "fifo", "fifo: first come, first served"
        FAIR = "fair", "fair: owners take turns"

    line_policy = models.CharField(
        max_length=10, choices=LinePolicy.choices, default=LinePolicy.FIFO,
        help_text="fair: among jobs of one priority, owners take turns (with more than one slot; serialized mode is global FIFO).",
    )
    # A line limit: a submit that would make this model's line longer is answered 429 (checked under the lock).
    max_waiting = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Most jobs that may wait in this model's line; a submit beyond it is refused with 429 (empty: no limit).",
    )
    # The one per-model deadline (see attempt_timeout), whatever the runner: the reaper ends a simulated
    # job past it, the http runner its call to a sync provider, the poller a job at a provider.
    timeout_seconds = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="How long one attempt of a job on this model may run, from its start; longer, it fails as "
                  "timed out (empty: COORDINATOR_JOB_TIMEOUT, which is also the most it may be).",
    )
    max_connect_retries = models.PositiveSmallIntegerField(
        default=3, help_text="Retries of a provider submit after a refused connection (for a generic provider, "
                             "which takes an idempotency key, also after a reset connection, a timeout or a 5xx)."
    )

    class Meta:
        db_table = "model_catalog"
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(capacity__gte=1), name="model_catalog_capacity_positive"),
            models.CheckConstraint(
                condition=Q(default_simulate_seconds__gte=0), name="model_catalog_simulate_seconds_nonnegative"
            ),
            models.CheckConstraint(
                condition=Q(provider_style__in=["sync", "poll", "callback"]), name="model_catalog_provider_style_valid"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        self.clean_provider()
        if self.provider_style == self.ProviderStyle.CALLBACK and not self.callback_secret_env:
            raise ValidationError({"callback_secret_env": "A callback provider needs the name of the variable holding its callbacks' secret."})
        if self.poll_interval_seconds is not None and self.poll_interval_seconds < 0.05:
            raise ValidationError({"poll_interval_seconds": "Poll at most twenty times a second (0.05 s or more)."})

    def clean_provider(self) -> None:
        """Refuse a provider setting that could not run a job, each message saying what is missing.
        The facts per provider are in coordination/provider_catalog.py."""
        http = self.runner == self.Runner.HTTP
        if http and not self.provider:
            self.provider = "generic"  # an http model that names none speaks our protocol, as before
        if self.provider_input is None:
            self.provider_input = {}  # the form's empty box: no mapping
        errors: dict[str, list[str]] = {}

        def refuse(field: str, message: str) -> None:
            errors.setdefault(field, []).append(message)

        facts = provider_catalog.PROVIDERS.get(self.provider)
        if facts is None:
            for field in ("provider_model", "provider_base_url", "provider_workflow"):
                if getattr(self, field):
                    refuse(field, "Name the provider this is for (provider is empty).")
        else:
            name = facts.label
            if http:
                # A model without what its provider needs would fail every job it gets: refuse it now.
                missing = {
                    "provider_url": "A generic provider needs a provider URL: where the http runner POSTs a job.",
                    "provider_model": f"A {name} model needs provider_model: {facts.model_form}.",
                    "credential_env": f"A {name} model needs credential_env: the name of the variable holding your {name} "
                                      "API key where the qcluster runs, e.g. " + f"{self.provider.upper()}_API_KEY.",
                    "provider_base_url": f"A {name} model needs provider_base_url: the server's address, e.g. http://127.0.0.1:8188.",
                    "provider_workflow": f"A {name} model needs provider_workflow: the API-format graph and the node inputs "
                                         "that take the prompt (see docs/providers.md).",
                }
                for field in facts.requires:
                    if not getattr(self, field):
                        refuse(field, missing[field])
            if self.provider_model:
                if facts.model_pattern is None:
                    refuse("provider_model", f"A {name} model takes no provider_model.")
                elif not facts.model_pattern.fullmatch(self.provider_model):
                    refuse("provider_model", f"Not a {name} model name: give {facts.model_form}.")
            if self.provider == "generic" and self.provider_base_url:
                refuse("provider_base_url", "A generic provider is reached at its provider URL; leave provider_base_url empty.")
            if self.provider_workflow is not None and self.provider != "comfyui":
                refuse("provider_workflow", "Only a ComfyUI model takes a workflow.")
        if self.provider_workflow is not None and self.provider == "comfyui":
            for message in provider_catalog.workflow_problems(self.provider_workflow):
                refuse("provider_workflow", message)
        for message in provider_catalog.input_problems(self.provider_input):
            refuse("provider_input", message)
        if errors:
            raise ValidationError(errors)

    @property
    def attempt_timeout(self) -> int:
        """timeout_seconds as it applies (see attempt_timeout())."""
        return attempt_timeout(self.timeout_seconds)

    # The reaper's name for this deadline until it was merged into timeout_seconds (migration 0021),
    # still accepted since the catalog's names are published: CatalogModel(max_runtime_seconds=...),
    # objects.create(max_runtime_seconds=...) and the admin's form. As that migration merged the two,
    # it narrows timeout_seconds (the smaller of the two is the deadline) and None changes nothing (it
    # never narrowed anything). Not a column: querysets (filter, update, values) know timeout_seconds only.
    @property
    def max_runtime_seconds(self) -> int | None:
        return self.timeout_seconds

    @max_runtime_seconds.setter
    def max_runtime_seconds(self, seconds: int | None) -> None:
        self.timeout_seconds = timeout_with_old_name(self.timeout_seconds, seconds)

    @property
    def uploads_files(self) -> bool:
        """Whether its provider takes the files we keep by upload, not by a link (provider_catalog)."""
        return self.runner == self.Runner.HTTP and provider_catalog.PROVIDERS[self.provider or "generic"].uploads_files

    @property
    def detaches(self) -> bool:
        """Whether its jobs leave the worker once the provider accepted them (a row, not a process):
        every provider's but a generic sync one's, whose answer is the result."""
        if self.runner != self.Runner.HTTP:
            return False
        return self.provider not in ("", "generic") or self.provider_style in self.DETACHED_STYLES


class CapacityGroup(models.Model):
    """Models that share a limit, such as a provider API key that allows N jobs at once across them:
    a job starts only when every group of every model it needs has room."""

    name = models.CharField(max_length=100, unique=True, help_text="As operators name it, e.g. acme-api-key.")
    capacity = models.PositiveSmallIntegerField(default=1, help_text="Jobs that may run at once on this group's models together.")
    catalog_models = models.ManyToManyField(
        CatalogModel, related_name="capacity_groups", blank=True, db_table="capacity_group_models",
        verbose_name="models", help_text="The catalog models whose running jobs count against this group.",
    )
    description = models.TextField(blank=True, default="")

    class Meta:
        db_table = "capacity_groups"
        ordering = ["name"]
        constraints = [models.CheckConstraint(condition=Q(capacity__gte=1), name="capacity_groups_capacity_positive")]

    def __str__(self) -> str:
        return self.name


class Job(models.Model):
    class Kind(models.TextChoices):
        NORMAL = "normal"
        WORKFLOW = "workflow"

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"
        EXPIRED = "expired"

    # How a running attempt may end for good; and every status a job ends in (a waiting job whose
    # start-by deadline passed ends `expired`, never having run).
    OUTCOMES = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)
    FINISHED = (*OUTCOMES, Status.EXPIRED)
    LIVE = (Status.PENDING, Status.RUNNING)

    job_id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.NORMAL)
    job_type = models.CharField(max_length=10, choices=MediaType.choices)
    model = models.CharField(max_length=100, null=True, blank=True, help_text="Null for a workflow.")
    prompt = models.TextField(blank=True, default="")
    params = models.JSONField(default=dict, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    priority = models.IntegerField(default=0)
    # The client's own name for the job (POST /jobs/batch), answered back on it; never read by us.
    client_ref = models.CharField(max_length=200, null=True, blank=True, help_text="The client's reference, as it sent it.")
    # While waiting: it needs a paused model, so it holds back only jobs that need that model too.
    # Kept in step by the coordinator (pause, resume, joining the line) so that the jobs passing it
    # find their way with one index probe, however many are held.
    held = models.BooleanField(default=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    required_models = models.JSONField(default=list)
    # Position in line when the job was queued; the API reports the live position.
    queue_position = models.PositiveIntegerField(null=True, blank=True)
    blocked_by_job_id = models.UUIDField(null=True, blank=True, db_index=True)
    conflict_reason = models.TextField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    # Taken under the coordinator lock: line order is acceptance order.
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(null=True, blank=True)
    # Every start is a new attempt; a worker acts for one attempt only (its fence).
    attempt = models.PositiveIntegerField(default=0)
    claimed_attempt = models.PositiveIntegerField(default=0)
    # The running attempt's lease: its worker renews it; the reaper ends the attempt once it lapses.
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # Scheduling policies a submit may ask for: ends `expired` if still waiting at start_by; two live
    # jobs of one owner never share a dedupe_key.
    start_by = models.DateTimeField(null=True, blank=True, help_text="Expires if it has not started by then.")
    dedupe_key = models.CharField(max_length=255, null=True, blank=True, help_text="The owner's name for this work.")
    # Where its events are POSTed (coordination/webhooks.py), and which ones (null: the terminal ones).
    webhook_url = models.CharField(max_length=2048, null=True, blank=True)
    webhook_events_filter = models.JSONField(null=True, blank=True)
    # The ended job this one was made again from (Retry: coordination/services/resubmit.py); the
    # jobs made from this one are its `retried_as`. A retry outlives the job it came from.
    retry_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retried_as", db_index=True,
        help_text="The job this one retries (made with its request).",
    )

    class Meta:
        db_table = "jobs"
        ordering = ["-created_at"]
        indexes = [
            # The line: pending jobs by priority, then acceptance order. Partial, so a job that starts
            # or ends leaves it and no later write of that job touches it again (on the hot path every
            # transition rewrites a job row: fewer index entries to write, none dead to walk past).
            models.Index(
                fields=["-priority", "created_at", "job_id"], condition=Q(status="pending"), name="jobs_line_idx"
            ),
            # The same line without the jobs a pause holds (serialized mode passes them).
            models.Index(
                fields=["held", "-priority", "created_at", "job_id"], condition=Q(status="pending"),
                name="jobs_line_unheld_idx",
            ),
            # The running jobs (at most one per slot), in the order they started.
            models.Index(fields=["started_at", "job_id"], condition=Q(status="running"), name="jobs_running_idx"),
            models.Index(fields=["owner", "-created_at"], name="jobs_owner_idx"),
            # The per-user pending limit counts these under the lock: only waiting jobs, not history.
            models.Index(fields=["owner"], condition=Q(status="pending"), name="jobs_owner_pending_idx"),
            # The reaper's expiry pass: the waiting jobs that have a deadline, soonest first.
            models.Index(fields=["start_by"], condition=Q(status="pending", start_by__isnull=False), name="jobs_deadline_idx"),
            # The console's recent history (its last 24 hours, its failures, its timeline), which it reads
            # again at every job event: the jobs that started or ended lately, not the whole table.
            # Partial, so a waiting job is in neither, and a lease renewal (no indexed column) stays HOT.
            models.Index(fields=["started_at"], condition=Q(started_at__isnull=False), name="jobs_started_idx"),
            models.Index(fields=["completed_at"], condition=Q(completed_at__isnull=False), name="jobs_completed_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["pending", "running", "completed", "failed", "cancelled", "expired"]),
                name="jobs_status_valid",
            ),
            # A key is taken while its job is live, free again once it ends.
            models.UniqueConstraint(
                fields=["owner", "dedupe_key"], condition=Q(status__in=["pending", "running"], dedupe_key__isnull=False),
                name="jobs_dedupe_live_unique",
            ),
            models.CheckConstraint(condition=Q(kind__in=["normal", "workflow"]), name="jobs_kind_valid"),
            # Only a waiting job can be blocked; the guide's "queued jobs" query relies on it.
            models.CheckConstraint(
                condition=Q(blocked_by_job_id__isnull=True) | Q(status="pending"),
                name="jobs_only_pending_blocked",
            ),
            models.CheckConstraint(
                condition=Q(model__isnull=False) | Q(kind="workflow"), name="jobs_normal_has_model"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} job {self.job_id}"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED


class JobLine(models.Model):
    """A waiting job's place in the line of one model it needs: one row per model, gone once it starts.

    The index gives each model's head, and a job's nearest predecessor, in one probe, however many
    jobs wait: that is what keeps a coordinator decision's cost flat in the queue's length.
    """

    id = models.BigAutoField(primary_key=True)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="lines", db_column="job_id")
    model = models.CharField(max_length=100)
    priority = models.IntegerField()
    created_at = models.DateTimeField()
    held = models.BooleanField(default=False)  # as its job's: it needs a paused model

    # The job's owner (0: none): a fair line takes its owners' jobs in turns (queue/fair.py).
    owner_key = models.IntegerField(default=0)

    class Meta:
        db_table = "job_model_lines"
        indexes = [
            models.Index(fields=["model", "-priority", "created_at", "job"], name="job_model_lines_order_idx"),
            models.Index(fields=["model", "held", "-priority", "created_at", "job"], name="job_model_lines_unheld_idx"),
            # An owner's jobs in a fair line, oldest first (its next head when one leaves).
            models.Index(fields=["model", "owner_key", "priority", "created_at", "job"], name="job_model_lines_owner_idx"),
        ]
        constraints = [models.UniqueConstraint(fields=["job", "model"], name="job_model_lines_unique")]

    def __str__(self) -> str:
        return f"{self.job_id} in line for {self.model}"


NEVER_STARTED = datetime(1970, 1, 1, tzinfo=dt_timezone.utc)


class LineShare(models.Model):
    """A fair line's owner at one priority: how many of its jobs wait there, the oldest of them (its
    head), and the owner's last turn on the line (coordination/queue/fair.py)."""

    model = models.CharField(max_length=100)
    owner_key = models.IntegerField()
    priority = models.IntegerField()
    waiting = models.PositiveIntegerField(default=0)
    # When the owner last started a job on the line; NEVER_STARTED (the epoch) if it never did, so that
    # those owners sort first in a plain ascending index, and a comparison with it needs no NULL case.
    last_turn = models.DateTimeField(default=NEVER_STARTED)
    head_created_at = models.DateTimeField(null=True, blank=True)
    head_job_id = models.UUIDField(null=True, blank=True)

    class Meta:
        db_table = "job_line_shares"
        constraints = [models.UniqueConstraint(fields=["model", "owner_key", "priority"], name="job_line_shares_unique")]
        indexes = [
            # The line's order of owners: priority, last turn (never first), the head's acceptance.
            models.Index(
                fields=["model", "-priority", "last_turn", "head_created_at", "head_job_id"],
                condition=Q(waiting__gt=0), name="job_line_shares_order_idx",
            ),
        ]


class JobQueueCounter(models.Model):
    """How many jobs wait, kept under the coordinator lock so no decision has to count them."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    pending = models.PositiveIntegerField(default=0)

    class Meta:
        db_table = "job_queue_counters"


class JobQueueState(models.Model):
    """One slot: ids 1..COORDINATOR_MAX_ACTIVE_JOBS. Locking these rows is the coordinator lock."""

    id = models.PositiveSmallIntegerField(primary_key=True)
    active_job_id = models.UUIDField(null=True, blank=True)
    active_job_type = models.CharField(max_length=10, null=True, blank=True, choices=Job.Kind.choices)
    active_models = models.JSONField(default=list)
    started_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "job_queue_state"
        ordering = ["id"]
        verbose_name = "slot (job queue state)"
        verbose_name_plural = "slots (job queue state)"
        # The queue console's actions (pause, priority, cancel, dispatch, reconcile, the repairs) and
        # the matching admin actions; viewing the console needs staff status only.
        permissions = [("operate_queue", "Can operate the queue")]

    def __str__(self) -> str:
        return f"slot {self.id}"


class JobQueueLogManager(models.Manager):
    def record(
        self,
        *,
        event_type: str,
        job: Job | None = None,
        conflict_reason: str | None = None,
        details: dict | None = None,
    ) -> "JobQueueLog":
        """Write one audit row; callers do it inside the transaction that makes the change (the
        coordinator keeps its rows with its other writes instead: LockedQueue.record)."""
        row = self.model.of(event_type=event_type, job=job, conflict_reason=conflict_reason, details=details)
        row.save(force_insert=True)
        return row


class JobQueueLog(models.Model):
    class Event(models.TextChoices):
        SUBMITTED = "submitted"
        BLOCKED = "blocked"
        REBLOCKED = "reblocked"
        STARTED = "started"
        CLAIMED = "claimed"
        STEP_STARTED = "step_started"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"
        REFUSED = "refused"
        RETRIED = "retried"
        CANCEL_REQUESTED = "cancel_requested"
        LEASE_EXPIRED = "lease_expired"
        TIMED_OUT = "timed_out"
        # The reaper sent a started job's task again (no worker took it). The stored value stays
        # "requeued", older than the rule that "requeued" is a job sent back to waiting (job events).
        TASK_RESENT = "requeued", "Task resent"
        STALE_CLEARED = "stale_cleared"
        STATE_RESET = "state_reset"
        PRUNED = "pruned"
        MODEL_PAUSED = "model_paused"
        MODEL_RESUMED = "model_resumed"
        # An operator's edit of a catalog model or a workflow definition (the admin's forms).
        MODEL_CHANGED = "model_changed"
        GROUP_CHANGED = "group_changed"
        EXPIRED = "expired"
        # The provider accepted the attempt; the worker let go of it (coordination/providers).
        AT_PROVIDER = "at_provider"
        ADOPTED = "adopted"
        WORKFLOW_CHANGED = "workflow_changed"
        PRIORITY_CHANGED = "priority_changed"
        DISPATCHED = "dispatched"
        RECONCILED = "reconciled"
        # An ended job made again as a new job (its Retry), on the old job's trail; not RETRIED,
        # which is a second attempt of one job.
        RESUBMITTED = "resubmitted"

    id = models.BigAutoField(primary_key=True)
    job_id = models.UUIDField(null=True, blank=True, db_index=True)
    job_type = models.CharField(max_length=10, null=True, blank=True, choices=Job.Kind.choices)
    event_type = models.CharField(max_length=20, choices=Event.choices)
    conflict_reason = models.TextField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    details = models.JSONField(default=dict, blank=True)

    objects = JobQueueLogManager()

    @classmethod
    def of(cls, *, event_type: str, job: Job | None = None, conflict_reason: str | None = None,
           details: dict | None = None) -> "JobQueueLog":
        """An audit row about `job` (unsaved)."""
        return cls(job_id=job.job_id if job else None, job_type=job.kind if job else None, event_type=event_type,
                   conflict_reason=conflict_reason, details=details or {})

    class Meta:
        db_table = "job_queue_log"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["event_type", "created_at"], name="job_queue_log_event_idx")]

    def __str__(self) -> str:
        return f"{self.event_type} {self.job_id or ''}".strip()


class IdempotencyKey(models.Model):
    """A client's `Idempotency-Key` for one submission: the same key again returns the same job.

    Written in the transaction that creates the job, so a key never names a job that was rolled
    back; the unique constraint makes two racing requests with one key create one job.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="idempotency_keys")
    key = models.CharField(max_length=255)
    # sha256 of the validated request (path and body): the same key with another request is an error.
    request_hash = models.CharField(max_length=64)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="idempotency_keys", db_column="job_id")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        db_table = "idempotency_keys"
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="idempotency_keys_user_key_unique")]

    def __str__(self) -> str:
        return f"{self.key} ({self.user_id})"


class WebhookSecret(models.Model):
    """A user's signing secret for webhooks (Standard Webhooks, "whsec_" + base64). After a rotation
    the previous one still signs, beside the new one, until `previous_until`."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_secret")
    secret = models.CharField(max_length=100)
    previous = models.CharField(max_length=100, blank=True, default="")
    previous_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "webhook_secrets"


class WebhookDelivery(models.Model):
    """One event of a job for its webhook_url: written by the database in the change's own transaction
    (the job_events trigger, coordination/events/triggers.py), sent after commit by the worker cluster
    (coordination/webhooks.py), retried with the same webhook_id until delivered or 24 h."""

    class State(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    webhook_id = models.CharField(max_length=40, unique=True)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="webhook_deliveries")
    event_type = models.CharField(max_length=30)  # job.started, job.completed, ...
    url = models.CharField(max_length=2048)
    # {"type", "timestamp", "data"}: the body, as sent every time; rendered from event_state at the first send.
    payload = models.JSONField(null=True, blank=True)
    # The job's changing fields right after the event, as its job_events row keeps them (STATE_COLUMNS).
    event_state = models.JSONField(null=True, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "webhook_deliveries"
        ordering = ["id"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            # The sender's claim: the due ones in the order it sends them (it stops at its batch's size), and
            # each one's job's earliest pending one (webhooks.jq_webhooks_claim).
            models.Index(fields=["next_attempt_at", "id"], condition=Q(state="pending"), name="webhook_deliveries_due_idx"),
            models.Index(fields=["job", "id"], condition=Q(state="pending"), name="webhook_deliveries_pending_idx"),
            models.Index(fields=["job", "id"], name="webhook_deliveries_job_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.webhook_id}"


class WebhookAttempt(models.Model):
    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_rows")
    at = models.DateTimeField(default=timezone.now)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")

    class Meta:
        db_table = "webhook_attempts"
        ordering = ["id"]


class ProviderRun(models.Model):
    """A job's attempt that is at a remote provider (coordination/providers): the provider accepted it
    and said where to ask about it, and no worker process waits for it. One poller of one qcluster
    watches it at a time (`watcher`; its lease is the job's `lease_expires_at`, which that poller renews
    every third of a lease); a poller that adopts it from another raises `fence`, so the one it was taken from can
    no longer report it. Its outcome ends the job through the coordinator, in the same transaction
    that marks this row done (a poller's poll, or the provider's callback: whichever comes first)."""

    class State(models.TextChoices):
        IN_FLIGHT = "in_flight"
        DONE = "done"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="provider_runs", db_column="job_id")
    attempt = models.PositiveIntegerField()
    model = models.CharField(max_length=100)
    style = models.CharField(max_length=10)  # poll or callback
    provider_job_id = models.CharField(max_length=255)
    status_url = models.CharField(max_length=2048, blank=True, default="")
    state = models.CharField(max_length=10, choices=State.choices, default=State.IN_FLIGHT)
    provider_status = models.CharField(max_length=50, blank=True, default="")  # as the provider last said
    # What else its adapter named at submit (fal's response and cancel URLs, ComfyUI's client id, ...).
    provider_data = models.JSONField(blank=True, default=dict)
    # What the provider last said of its progress (0-1) and its place in the provider's own line, stored
    # by the poller when they change, at most twice a second (each change is a job.progress event).
    progress = models.FloatField(null=True, blank=True)
    queue_position = models.IntegerField(null=True, blank=True)
    submitted_at = models.DateTimeField()
    deadline_at = models.DateTimeField()  # the attempt's start + the model's timeout_seconds (attempt_timeout)
    watcher = models.CharField(max_length=100, null=True, blank=True)
    fence = models.PositiveIntegerField(default=0)
    cancel_sent_at = models.DateTimeField(null=True, blank=True)
    # Why the coordinator ends this run although nobody cancelled its job (its deadline, an operator's
    # Reset state or reconcile): its poller cancels it at the provider, and the job, which keeps its
    # slot and models meanwhile, fails with these words once the provider confirms or
    # COORDINATOR_PROVIDER_CANCEL_GRACE passes (coordination/providers).
    stop_reason = models.TextField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "provider_runs"
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["job", "attempt"], name="provider_runs_job_attempt_unique")]
        indexes = [
            # What pollers watch and adopt: the runs in flight (a small partial index).
            models.Index(fields=["watcher"], condition=Q(state="in_flight"), name="provider_runs_in_flight_idx"),
            # A callback finds its run by the provider's id.
            models.Index(fields=["model", "provider_job_id"], name="provider_runs_provider_id_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.provider_job_id} for job {self.job_id} attempt {self.attempt}"

    @property
    def data(self) -> dict:
        """provider_data, by the name an adapter reads a run's (coordination/runners/adapters/base.py)."""
        return self.provider_data


class JobFile(models.Model):
    """A file a completed job produced (its `result.files[n]`), kept by the coordinator so that it
    outlives the provider's copy (coordination/outputs). The row is written by the database when the
    job completes (coordination/events/triggers.py), whoever completes it; a qcluster's copier streams
    the file into storage (Django's default storage: MEDIA_ROOT, or a bucket) and says how it went.
    Its name in storage comes from its id, never from the provider's."""

    class State(models.TextChoices):
        COPYING = "copying"
        STORED = "stored"
        FAILED = "failed"
        EXPIRED = "expired"  # past COORDINATOR_OUTPUT_RETENTION_DAYS, or deleted by an operator

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="files", db_column="job_id")
    n = models.PositiveIntegerField()  # its place in result.files, from 0
    source_url = models.TextField()
    state = models.CharField(max_length=10, choices=State.choices, default=State.COPYING)
    # What the copy found: size in bytes, SHA-256 (hex), and the content type (checked against the bytes).
    size = models.BigIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True, default="")
    content_type = models.CharField(max_length=200, blank=True, default="")
    storage_name = models.CharField(max_length=300, blank=True, default="")
    error = models.TextField(blank=True, default="")
    tries = models.PositiveSmallIntegerField(default=0)
    # When it may be copied (again): now at first, later after a failed try (back-off).
    next_try_at = models.DateTimeField()
    # A copier holds it until then; another takes it once that passes (the copier died).
    held_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    stored_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "job_files"
        ordering = ["job_id", "n"]
        constraints = [models.UniqueConstraint(fields=["job", "n"], name="job_files_job_n_unique")]
        indexes = [
            # What copiers look for: the files still to copy (a small partial index).
            models.Index(fields=["next_try_at"], condition=Q(state="copying"), name="job_files_copying_idx"),
            # What the retention prune walks.
            models.Index(fields=["stored_at"], condition=Q(state="stored"), name="job_files_stored_idx"),
        ]

    def __str__(self) -> str:
        return f"file {self.n} of job {self.job_id} ({self.state})"


class JobEvent(models.Model):
    """One change of a job that a client can see (its status, what it waits for, its priority, a
    workflow's step), written by the database itself: triggers on `jobs` and `workflow_executions`
    (coordination/events/triggers.py) add the row in the transaction that makes the change, whoever
    makes it (the coordinator, a repair, an operator's SQL). Live streams and `Prefer: wait`
    read them (coordination/events); the id orders one job's changes as they were committed.

    `state` holds the job's changing fields as they were right after it (STATE_COLUMNS), so an event
    sent late (a reconnect) still shows the job as it was then."""

    id = models.BigAutoField(primary_key=True)
    job_id = models.UUIDField()
    # submitted, started, requeued, completed, failed, cancelled, expired, blocked, priority,
    # cancel_requested, step, progress, files, changed
    event = models.CharField(max_length=20)
    state = models.JSONField()
    created_at = models.DateTimeField()

    class Meta:
        db_table = "job_events"
        ordering = ["id"]
        # One index beside the key: every transition writes here (the daily prune walks the key,
        # which follows time, instead of an index on created_at).
        indexes = [models.Index(fields=["job_id", "id"], name="job_events_job_idx")]

    def __str__(self) -> str:
        return f"job.{self.event} {self.job_id}"


class InputFile(models.Model):
    """A file a user sent (POST /files) for their jobs to name as `file:<id>` in their params or a
    workflow's inputs; a runner gets a signed link to it instead (coordination/outputs/inputs.py). Its
    name in storage comes from ids, never from the file name the user sent."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="input_files")
    storage_name = models.CharField(max_length=300)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    content_type = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "input_files"

    def __str__(self) -> str:
        return f"{self.id} ({self.content_type}, {self.size} bytes)"
