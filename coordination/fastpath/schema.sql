-- The coordinator's hot transitions as PL/pgSQL, so that a submit or a completion is one statement
-- under the coordinator lock instead of fifteen round trips. Installed by migration 0013 and again by
-- 0014, 0016, 0017, 0018 and 0020 (PostgreSQL only); coordination/fastpath/__init__.py calls them. They apply exactly the rules of
-- coordination/queue/rules.py and the writes of coordination/queue/locked.py and
-- coordination/transitions.py; tests/concurrency/test_scheduling_properties.py runs every step on
-- both paths and compares the whole state after each.
--
-- Every function runs inside the caller's transaction, after the caller locked the slot rows
-- (select_for_update, id order). `ctx` carries what Python needs afterwards: the events it turns
-- into [COORDINATOR] lines (the words live in Python, coordination/queue/words.py), the tasks to
-- enqueue on commit, and the job a finishing worker takes (the hand-off).

DROP FUNCTION IF EXISTS jq_in_use(text);
DROP FUNCTION IF EXISTS jq_holder(text);
DROP FUNCTION IF EXISTS jq_any_conflict(jsonb);
DROP FUNCTION IF EXISTS jq_free_slot(int);
DROP FUNCTION IF EXISTS jq_start(jsonb, uuid, boolean);
DROP FUNCTION IF EXISTS jq_submit(jsonb, timestamptz, int, int);

-- Scheduling policies (capacity groups, fair lines, line limits, deadlines) are decided by the Python
-- path alone, and so are the transitions of jobs with webhooks (the job_events trigger writes their
-- deliveries on either path; the Python path also has them sent at commit, not at the next pass):
-- while one is in use, jq_submit_many and jq_finish answer {"outcome": "python"} having changed
-- nothing. Four probes of tiny tables or empty partial indexes when none is.
CREATE OR REPLACE FUNCTION jq_policies_in_use() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM capacity_group_models)
        OR EXISTS (SELECT 1 FROM model_catalog WHERE max_waiting IS NOT NULL OR line_policy <> 'fifo')
        OR EXISTS (SELECT 1 FROM jobs WHERE status = 'pending' AND start_by IS NOT NULL)
        OR EXISTS (SELECT 1 FROM jobs WHERE status IN ('pending', 'running') AND webhook_url IS NOT NULL);
END $$;

-- The small reads below are PL/pgSQL, not SQL functions: PostgreSQL plans a non-inlined SQL
-- function anew at every call, while PL/pgSQL keeps its plans for the session.

CREATE OR REPLACE FUNCTION jq_capacity(p_model text) RETURNS int LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN coalesce((SELECT capacity FROM model_catalog WHERE name = p_model), 1);
END $$;

CREATE OR REPLACE FUNCTION jq_paused_any() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM model_catalog WHERE paused);
END $$;

-- Which of `models` (in their order) an operator paused.
CREATE OR REPLACE FUNCTION jq_paused_among(p_models jsonb) RETURNS text[] LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT jq_paused_any() THEN
        RETURN '{}';
    END IF;
    RETURN (SELECT coalesce(array_agg(m.name ORDER BY m.n), '{}')
            FROM jsonb_array_elements_text(p_models) WITH ORDINALITY AS m(name, n)
            WHERE EXISTS (SELECT 1 FROM model_catalog c WHERE c.name = m.name AND c.paused));
END $$;

-- The running jobs are read from the jobs table by status when a decision needs them (never from
-- the slot rows, so a hand-edited slot row can never make a model in use look free), through the
-- partial index jobs_running_idx, in the order they started (then by id). They used to be carried
-- in ctx as one jsonb array read whole at every transition: with 1,000 jobs running (detached at a
-- provider) that read and its re-sorts cost 20 ms a submit. Every write of a job's status comes
-- before the decision that follows it in the same transaction, so the table is always what a
-- carried copy would be.
DROP FUNCTION IF EXISTS jq_running_load();
DROP FUNCTION IF EXISTS jq_running_add(jsonb, jobs);
DROP FUNCTION IF EXISTS jq_running_remove(jsonb, uuid);

CREATE OR REPLACE FUNCTION jq_in_use(ctx jsonb, p_model text) RETURNS int LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN (SELECT count(*) FROM jobs WHERE status = 'running' AND required_models ? p_model);
END $$;

-- A running job as rules.py names it: {"id", "kind", "models", "at"}.
CREATE OR REPLACE FUNCTION jq_running_entry(r jobs) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN jsonb_build_object('id', r.job_id, 'kind', r.kind, 'models', r.required_models, 'at', r.started_at);
END $$;

-- The running job that holds `model` longest.
CREATE OR REPLACE FUNCTION jq_holder(ctx jsonb, p_model text) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN (SELECT jq_running_entry(j) FROM jobs j WHERE j.status = 'running' AND j.required_models ? p_model
            ORDER BY j.started_at, j.job_id LIMIT 1);
END $$;

-- The job running longest, whatever its models.
CREATE OR REPLACE FUNCTION jq_longest_running() RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN (SELECT jq_running_entry(j) FROM jobs j WHERE j.status = 'running' ORDER BY j.started_at, j.job_id LIMIT 1);
END $$;

CREATE OR REPLACE FUNCTION jq_running_count() RETURNS int LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN (SELECT count(*) FROM jobs WHERE status = 'running');
END $$;

CREATE OR REPLACE FUNCTION jq_any_conflict(ctx jsonb, p_models jsonb) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    m text;
    used int;
BEGIN
    FOR m IN SELECT e.name FROM jsonb_array_elements_text(p_models) AS e(name) LOOP
        used := jq_in_use(ctx, m);
        IF used > 0 AND used >= jq_capacity(m) THEN
            RETURN true;
        END IF;
    END LOOP;
    RETURN false;
END $$;

-- rules.free_slot(): a slot row that may take a job, or NULL when every slot is busy.
CREATE OR REPLACE FUNCTION jq_free_slot(ctx jsonb) RETURNS int LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    slots int := (ctx->>'slots')::int;
BEGIN
    IF jq_running_count() >= slots THEN
        RETURN NULL;
    END IF;
    RETURN (
        SELECT s.id FROM job_queue_state s
        WHERE s.id <= slots AND (
            s.active_job_id IS NULL
            OR NOT EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = s.active_job_id AND j.status = 'running')
        )
        ORDER BY s.id LIMIT 1
    );
END $$;

-- The waiting-jobs counter (LockedQueue._count_pending / pending_count / recount_pending).
CREATE OR REPLACE FUNCTION jq_recount_pending() RETURNS int LANGUAGE plpgsql VOLATILE AS $$
DECLARE n int;
BEGIN
    n := (SELECT count(*) FROM jobs WHERE status = 'pending');
    INSERT INTO job_queue_counters (id, pending) VALUES (1, n)
        ON CONFLICT (id) DO UPDATE SET pending = EXCLUDED.pending;
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION jq_count_pending(p_delta int) RETURNS int LANGUAGE plpgsql VOLATILE AS $$
DECLARE n int;
BEGIN
    UPDATE job_queue_counters SET pending = pending + p_delta WHERE id = 1 RETURNING pending INTO n;
    IF NOT FOUND THEN
        RETURN jq_recount_pending();
    END IF;
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION jq_pending_count() RETURNS int LANGUAGE plpgsql VOLATILE AS $$
DECLARE n int;
BEGIN
    SELECT pending INTO n FROM job_queue_counters WHERE id = 1;
    IF NOT FOUND THEN
        RETURN jq_recount_pending();
    END IF;
    RETURN n;
END $$;

-- The nearest waiting job ahead of `j` in the global line (lines.nearest_ahead; for a new job, the
-- last one at its priority or above). `p_unheld`: passing over the jobs a pause holds.
CREATE OR REPLACE FUNCTION jq_ahead_global(j jobs, p_new boolean, p_unheld boolean) RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE hit uuid;
BEGIN
    IF p_new THEN
        IF p_unheld THEN
            SELECT job_id INTO hit FROM jobs WHERE status = 'pending' AND NOT held AND job_id <> j.job_id
                AND priority >= j.priority ORDER BY priority, created_at DESC, job_id DESC LIMIT 1;
        ELSE
            SELECT job_id INTO hit FROM jobs WHERE status = 'pending' AND job_id <> j.job_id
                AND priority >= j.priority ORDER BY priority, created_at DESC, job_id DESC LIMIT 1;
        END IF;
        RETURN hit;
    END IF;
    IF p_unheld THEN
        SELECT job_id INTO hit FROM jobs WHERE status = 'pending' AND NOT held AND priority = j.priority
            AND (created_at < j.created_at OR (created_at = j.created_at AND job_id < j.job_id))
            ORDER BY priority, created_at DESC, job_id DESC LIMIT 1;
        IF hit IS NULL THEN
            SELECT job_id INTO hit FROM jobs WHERE status = 'pending' AND NOT held AND priority > j.priority
                ORDER BY priority, created_at DESC, job_id DESC LIMIT 1;
        END IF;
    ELSE
        SELECT job_id INTO hit FROM jobs WHERE status = 'pending' AND priority = j.priority
            AND (created_at < j.created_at OR (created_at = j.created_at AND job_id < j.job_id))
            ORDER BY priority, created_at DESC, job_id DESC LIMIT 1;
        IF hit IS NULL THEN
            SELECT job_id INTO hit FROM jobs WHERE status = 'pending' AND priority > j.priority
                ORDER BY priority, created_at DESC, job_id DESC LIMIT 1;
        END IF;
    END IF;
    RETURN hit;
END $$;

-- The same in one model's line (job_model_lines): the nearest earlier job that needs `p_model`.
CREATE OR REPLACE FUNCTION jq_ahead_in(p_model text, j jobs, p_new boolean, p_unheld boolean) RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE hit uuid;
BEGIN
    IF p_new THEN
        IF p_unheld THEN
            SELECT job_id INTO hit FROM job_model_lines WHERE model = p_model AND NOT held
                AND priority >= j.priority ORDER BY priority, created_at DESC, job_id DESC LIMIT 1;
        ELSE
            SELECT job_id INTO hit FROM job_model_lines WHERE model = p_model
                AND priority >= j.priority ORDER BY priority, created_at DESC, job_id DESC LIMIT 1;
        END IF;
        RETURN hit;
    END IF;
    IF p_unheld THEN
        SELECT job_id INTO hit FROM job_model_lines WHERE model = p_model AND NOT held AND priority = j.priority
            AND (created_at < j.created_at OR (created_at = j.created_at AND job_id < j.job_id))
            ORDER BY priority, created_at DESC, job_id DESC LIMIT 1;
        IF hit IS NULL THEN
            SELECT job_id INTO hit FROM job_model_lines WHERE model = p_model AND NOT held AND priority > j.priority
                ORDER BY priority, created_at DESC, job_id DESC LIMIT 1;
        END IF;
    ELSE
        SELECT job_id INTO hit FROM job_model_lines WHERE model = p_model AND priority = j.priority
            AND (created_at < j.created_at OR (created_at = j.created_at AND job_id < j.job_id))
            ORDER BY priority, created_at DESC, job_id DESC LIMIT 1;
        IF hit IS NULL THEN
            SELECT job_id INTO hit FROM job_model_lines WHERE model = p_model AND priority > j.priority
                ORDER BY priority, created_at DESC, job_id DESC LIMIT 1;
        END IF;
    END IF;
    RETURN hit;
END $$;

-- rules.predecessor(): the nearest waiting job ahead of `j` that it must wait behind (docs/design.md, rule 3).
CREATE OR REPLACE FUNCTION jq_predecessor(j jobs, p_new boolean, p_any_model boolean, p_slots int) RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    unheld boolean := jq_paused_any() AND cardinality(jq_paused_among(j.required_models)) = 0;
    m text;
    hit uuid;
BEGIN
    IF p_slots = 1 OR p_any_model THEN
        RETURN jq_ahead_global(j, p_new, unheld);
    END IF;
    FOR m IN SELECT e.name FROM jsonb_array_elements_text(j.required_models) WITH ORDINALITY AS e(name, n) ORDER BY e.n LOOP
        hit := jq_ahead_in(m, j, p_new, unheld);
        IF hit IS NOT NULL THEN
            RETURN hit;
        END IF;
    END LOOP;
    RETURN NULL;
END $$;

-- rules.assess(): may `j` start now? If not, the job it waits for and why, in words.
CREATE OR REPLACE FUNCTION jq_assess(
    INOUT ctx jsonb, j jobs, p_new boolean,
    OUT can_start boolean, OUT blocker uuid, OUT reason text
) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    slots int := (ctx->>'slots')::int;
    conflict_models text[] := '{}';
    conflict_words text[] := '{}';
    first_holder uuid;
    holder jsonb;
    ahead jobs;
    ahead_id uuid;
    shared text[];
    paused text[];
    m text;
    used int;
BEGIN
    FOR m IN SELECT e.name FROM jsonb_array_elements_text(j.required_models) WITH ORDINALITY AS e(name, n) ORDER BY e.n LOOP
        used := jq_in_use(ctx, m);
        IF used > 0 AND used >= jq_capacity(m) THEN
            holder := jq_holder(ctx, m);
            conflict_models := conflict_models || m;
            conflict_words := conflict_words || format('%s in use by %s job %s', m, holder->>'kind', holder->>'id');
            first_holder := coalesce(first_holder, (holder->>'id')::uuid);
        END IF;
    END LOOP;
    IF cardinality(conflict_models) > 0 THEN
        ctx := jsonb_set(ctx, '{events}', (ctx->'events') || jsonb_build_array(jsonb_build_array('conflict', to_jsonb(conflict_models))));
    END IF;

    ahead_id := jq_predecessor(j, p_new, false, slots);
    IF ahead_id IS NOT NULL THEN
        SELECT * INTO ahead FROM jobs WHERE job_id = ahead_id;
        SELECT coalesce(array_agg(e.name ORDER BY e.n), '{}') INTO shared
            FROM jsonb_array_elements_text(j.required_models) WITH ORDINALITY AS e(name, n)
            WHERE ahead.required_models ? e.name;
        can_start := false;
        blocker := ahead.job_id;
        IF cardinality(shared) > 0 THEN
            reason := format('Waiting in line for %s: %s job %s goes first', array_to_string(shared, ', '), ahead.kind, ahead.job_id);
        ELSE
            reason := format('Serialized mode: one job at a time; %s job %s goes first', ahead.kind, ahead.job_id);
        END IF;
        RETURN;
    END IF;

    paused := jq_paused_among(j.required_models);
    IF cardinality(paused) > 0 THEN
        can_start := false;
        blocker := NULL;
        reason := format('Model paused: %s (an operator paused it; the job starts once it is resumed)', array_to_string(paused, ', '));
        RETURN;
    END IF;

    IF cardinality(conflict_models) > 0 THEN
        can_start := false;
        blocker := first_holder;
        reason := 'Model conflict: ' || array_to_string(conflict_words, '; ');
        RETURN;
    END IF;

    IF jq_free_slot(ctx) IS NULL THEN
        can_start := false;
        IF slots > 1 THEN
            ahead_id := jq_predecessor(j, p_new, true, slots);
            IF ahead_id IS NOT NULL THEN
                SELECT * INTO ahead FROM jobs WHERE job_id = ahead_id;
                blocker := ahead.job_id;
                reason := format('All %s slots are busy; %s job %s goes first', slots, ahead.kind, ahead.job_id);
                RETURN;
            END IF;
        END IF;
        holder := jq_longest_running();
        blocker := (holder->>'id')::uuid;
        IF slots = 1 THEN
            reason := format('Serialized mode: one job at a time; %s job %s is running (%s)', holder->>'kind', holder->>'id',
                (SELECT string_agg(e.name, ', ' ORDER BY e.n) FROM jsonb_array_elements_text(holder->'models') WITH ORDINALITY AS e(name, n)));
        ELSE
            reason := format('All %s slots are busy; waiting for a slot (longest running: %s job %s)', slots, holder->>'kind', holder->>'id');
        END IF;
        RETURN;
    END IF;
    can_start := true;
END $$;

CREATE OR REPLACE FUNCTION jq_event(ctx jsonb, VARIADIC p_parts text[]) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN jsonb_set(ctx, '{events}', (ctx->'events') || jsonb_build_array(to_jsonb(p_parts)));
END $$;

-- transitions.job_started + LockedQueue.start(): occupy a slot with waiting job `p_job`.
-- `p_new`: a job being accepted, not inserted yet: it is inserted running, in one write.
CREATE OR REPLACE FUNCTION jq_start(ctx jsonb, p_job uuid, p_waiting boolean, p_new jobs DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    now_ timestamptz := (ctx->>'now')::timestamptz;
    slot int := jq_free_slot(ctx);
    taken boolean := (ctx->>'take_next')::boolean AND ctx->'taken' = 'null'::jsonb;
    r jobs;
BEGIN
    IF slot IS NULL THEN
        RAISE EXCEPTION 'jq_start(%): no free slot', p_job;
    END IF;
    IF p_new.job_id IS NOT NULL THEN
        r := p_new;
        r.status := 'running';
        r.started_at := now_;
        r.attempt := r.attempt + 1;
        r.lease_expires_at := now_ + make_interval(secs => (ctx->>'lease')::int);
        IF taken THEN
            r.claimed_attempt := r.attempt;
        END IF;
        INSERT INTO jobs SELECT r.*;
    ELSE
        UPDATE jobs SET status = 'running', started_at = now_, attempt = attempt + 1, blocked_by_job_id = NULL,
                conflict_reason = NULL, lease_expires_at = now_ + make_interval(secs => (ctx->>'lease')::int),
                cancel_requested_at = NULL,
                claimed_attempt = CASE WHEN taken THEN attempt + 1 ELSE claimed_attempt END
            WHERE job_id = p_job AND status = 'pending'
            RETURNING * INTO r;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'Job % is not pending; it cannot become running', p_job USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    IF p_waiting THEN
        DELETE FROM job_model_lines WHERE job_id = p_job;
        PERFORM jq_count_pending(-1);
    END IF;
    UPDATE job_queue_state SET active_job_id = r.job_id, active_job_type = r.kind, active_models = r.required_models,
            started_at = now_
        WHERE id = slot;
    IF r.kind <> 'normal' THEN
        ctx := jq_event(ctx, 'blocked_changed', r.job_id::text, r.kind, NULL);
    END IF;
    ctx := jq_event(ctx, 'set_active', r.job_id::text, r.kind, r.required_models::text);
    INSERT INTO job_queue_log (job_id, job_type, event_type, conflict_reason, created_at, details)
        VALUES (r.job_id, r.kind, 'started', NULL, now_,
                jsonb_build_object('slot', slot, 'attempt', r.attempt, 'models', r.required_models));
    IF taken THEN
        INSERT INTO job_queue_log (job_id, job_type, event_type, conflict_reason, created_at, details)
            VALUES (r.job_id, r.kind, 'claimed', NULL, now_, jsonb_build_object('attempt', r.attempt, 'handoff', true));
        ctx := jsonb_set(ctx, '{taken}', to_jsonb(r));
        ctx := jsonb_set(ctx, '{taken_model}', coalesce((SELECT to_jsonb(c) FROM model_catalog c WHERE c.name = r.model), 'null'::jsonb));
    ELSE
        ctx := jsonb_set(ctx, '{enqueue}', (ctx->'enqueue') || jsonb_build_array(jsonb_build_array(r.job_id, r.attempt)));
    END IF;
    RETURN ctx || jsonb_build_object('started', to_jsonb(r));
END $$;

-- LockedQueue.block(): record what a waiting job waits for now.
CREATE OR REPLACE FUNCTION jq_block(ctx jsonb, p_job uuid, p_blocker uuid, p_reason text, p_first boolean) RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    now_ timestamptz := (ctx->>'now')::timestamptz;
    r jobs;
    previous uuid;
    behind int;
    place int;
BEGIN
    SELECT * INTO r FROM jobs WHERE job_id = p_job;
    previous := r.blocked_by_job_id;
    IF p_first OR r.queued_at IS NULL THEN
        -- Its place in the global line when it joined: the counter, less the lower-priority jobs behind it.
        behind := (SELECT count(*) FROM jobs WHERE status = 'pending' AND priority < r.priority);
        place := jq_pending_count() - behind;
        UPDATE jobs SET blocked_by_job_id = p_blocker, conflict_reason = p_reason, queued_at = now_,
                queue_position = place
            WHERE job_id = p_job;
    ELSE
        UPDATE jobs SET blocked_by_job_id = p_blocker, conflict_reason = p_reason WHERE job_id = p_job;
    END IF;
    IF r.kind <> 'normal' THEN
        ctx := jq_event(ctx, 'blocked_changed', r.job_id::text, r.kind, p_blocker::text);
    END IF;
    IF p_first THEN
        ctx := jq_event(ctx, 'blocked', r.job_id::text, p_reason, p_blocker::text);
    ELSE
        ctx := jq_event(ctx, 'still_queued', r.job_id::text, p_blocker::text, p_reason);
    END IF;
    INSERT INTO job_queue_log (job_id, job_type, event_type, conflict_reason, created_at, details)
        VALUES (r.job_id, r.kind, CASE WHEN p_first THEN 'blocked' ELSE 'reblocked' END, p_reason, now_,
                jsonb_build_object('blocked_by_job_id', p_blocker::text, 'previous', previous::text));
    RETURN ctx;
END $$;

-- rules._next_startable(): the first job in line that heads the line of every model it needs, all free.
CREATE OR REPLACE FUNCTION jq_next_startable(ctx jsonb) RETURNS uuid LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    slots int := (ctx->>'slots')::int;
    unheld boolean := jq_paused_any();
    head jobs;
    candidate jobs;
    heads_all boolean;
BEGIN
    IF slots = 1 THEN
        -- Serialized mode is global FIFO among the jobs that may run at all.
        IF unheld THEN
            SELECT * INTO head FROM jobs WHERE status = 'pending' AND NOT held ORDER BY priority DESC, created_at, job_id LIMIT 1;
        ELSE
            SELECT * INTO head FROM jobs WHERE status = 'pending' ORDER BY priority DESC, created_at, job_id LIMIT 1;
        END IF;
        IF head.job_id IS NOT NULL AND NOT jq_any_conflict(ctx, head.required_models) THEN
            RETURN head.job_id;
        END IF;
        RETURN NULL;
    END IF;
    FOR candidate IN
        SELECT DISTINCT ON (j.priority, j.created_at, j.job_id) j.*
        FROM model_catalog c
        CROSS JOIN LATERAL (
            SELECT l.job_id FROM job_model_lines l
            WHERE l.model = c.name AND (NOT unheld OR NOT l.held)
            ORDER BY l.priority DESC, l.created_at, l.job_id LIMIT 1
        ) AS h
        JOIN jobs j ON j.job_id = h.job_id
        WHERE jq_in_use(ctx, c.name) < c.capacity AND NOT c.paused
        ORDER BY j.priority DESC, j.created_at, j.job_id
    LOOP
        SELECT bool_and(
            (SELECT l.job_id FROM job_model_lines l
             WHERE l.model = e.name AND (NOT unheld OR NOT l.held)
             ORDER BY l.priority DESC, l.created_at, l.job_id LIMIT 1) IS NOT DISTINCT FROM candidate.job_id
        ) INTO heads_all
        FROM jsonb_array_elements_text(candidate.required_models) AS e(name);
        IF heads_all AND NOT jq_any_conflict(ctx, candidate.required_models) THEN
            RETURN candidate.job_id;
        END IF;
    END LOOP;
    RETURN NULL;
END $$;

-- LockedQueue.dispatch(): start every waiting job that may start now, in line order.
CREATE OR REPLACE FUNCTION jq_dispatch(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    slots int := (ctx->>'slots')::int;
    waiting int;
    next_job uuid;
BEGIN
    IF jq_free_slot(ctx) IS NULL THEN
        RETURN ctx;
    END IF;
    waiting := jq_pending_count();
    IF waiting = 0 THEN
        RETURN jq_event(ctx, 'no_queued');
    END IF;
    ctx := jq_event(ctx, 'found', waiting::text);
    WHILE jq_free_slot(ctx) IS NOT NULL LOOP
        next_job := jq_next_startable(ctx);
        EXIT WHEN next_job IS NULL;
        ctx := jq_event(ctx, 'starting_next', next_job::text);
        ctx := jq_start(ctx, next_job, true);
    END LOOP;
    RETURN ctx;
END $$;

-- LockedQueue.settle_after(): start what may start, then decide again for whoever named a finished job.
CREATE OR REPLACE FUNCTION jq_settle_after(ctx jsonb, p_finished uuid[]) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    w jobs;
    verdict record;
BEGIN
    ctx := jq_dispatch(ctx);
    FOR w IN SELECT * FROM jobs WHERE status = 'pending' AND blocked_by_job_id = ANY(p_finished)
             ORDER BY priority DESC, created_at, job_id LOOP
        SELECT * INTO verdict FROM jq_assess(ctx, w, false);
        ctx := verdict.ctx;
        IF verdict.can_start THEN
            ctx := jq_event(ctx, 'starting_next', w.job_id::text);
            ctx := jq_start(ctx, w.job_id, true);
        ELSE
            ctx := jq_block(ctx, w.job_id, verdict.blocker, verdict.reason, false);
        END IF;
    END LOOP;
    RETURN ctx;
END $$;

-- job_accept() and POST /jobs/batch: each job admitted in turn (jq_admit), in order, under the one lock
-- the caller holds.
-- Answers {"events": [...], "enqueue": [...], "jobs": [row, ...]} in the batch's order.
CREATE OR REPLACE FUNCTION jq_submit_many(p_jobs jsonb, p_now timestamptz, p_slots int, p_lease int) RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    ctx jsonb := jsonb_build_object('events', '[]'::jsonb, 'enqueue', '[]'::jsonb, 'taken', 'null'::jsonb,
                                    'take_next', false, 'now', p_now, 'slots', p_slots, 'lease', p_lease);
    item jsonb;
    -- Collected per job in arrays (appended in place), not in ctx: a jsonb grown by one event at a
    -- time would be copied whole at every step.
    events jsonb[] := '{}';
    enqueue jsonb[] := '{}';
    rows jsonb[] := '{}';
BEGIN
    IF jq_policies_in_use() THEN
        RETURN jsonb_build_object('outcome', 'python');
    END IF;
    FOR item IN SELECT e.value FROM jsonb_array_elements(p_jobs) WITH ORDINALITY AS e(value, n) ORDER BY e.n LOOP
        ctx := jq_admit(ctx || jsonb_build_object('events', '[]'::jsonb, 'enqueue', '[]'::jsonb), item);
        events := array_append(events, ctx->'events');
        enqueue := array_append(enqueue, ctx->'enqueue');
        rows := array_append(rows, ctx->'job');
    END LOOP;
    RETURN jsonb_build_object(
        'events', (SELECT coalesce(jsonb_agg(e.value ORDER BY a.n, e.n), '[]'::jsonb)
                   FROM unnest(events) WITH ORDINALITY AS a(value, n), jsonb_array_elements(a.value) WITH ORDINALITY AS e(value, n)),
        'enqueue', (SELECT coalesce(jsonb_agg(e.value ORDER BY a.n, e.n), '[]'::jsonb)
                    FROM unnest(enqueue) WITH ORDINALITY AS a(value, n), jsonb_array_elements(a.value) WITH ORDINALITY AS e(value, n)),
        'jobs', to_jsonb(rows),
        'taken', 'null'::jsonb);
END $$;

-- job_accept() + LockedQueue.admit() for one job: decide, then insert it started or queued.
CREATE OR REPLACE FUNCTION jq_admit(ctx jsonb, p_job jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    p_now timestamptz := (ctx->>'now')::timestamptz;
    j jobs;
    verdict record;
    had_running boolean;
    behind int;
    waiting int;
BEGIN
    -- The new row is decided on before it is written, and written once (an insert followed by an
    -- update of its indexed columns would write every index twice).
    j.job_id := (p_job->>'job_id')::uuid;
    j.kind := p_job->>'kind';
    j.job_type := p_job->>'job_type';
    j.model := p_job->>'model';
    j.prompt := p_job->>'prompt';
    j.params := p_job->'params';
    j.owner_id := (p_job->>'owner_id')::int;
    j.priority := (p_job->>'priority')::int;
    j.client_ref := p_job->>'client_ref';
    j.retry_of_id := (p_job->>'retry_of_id')::uuid;
    j.held := false;
    j.status := 'pending';
    j.required_models := p_job->'required_models';
    j.created_at := p_now;
    j.attempt := 0;
    j.claimed_attempt := 0;
    INSERT INTO job_queue_log (job_id, job_type, event_type, conflict_reason, created_at, details)
        VALUES (j.job_id, j.kind, 'submitted', NULL, p_now, jsonb_build_object('models', j.required_models));
    ctx := jq_event(ctx, 'checking', j.job_id::text, j.required_models::text);
    SELECT * INTO verdict FROM jq_assess(ctx, j, true);
    ctx := verdict.ctx;
    IF verdict.can_start THEN
        had_running := EXISTS (SELECT 1 FROM jobs WHERE status = 'running');
        ctx := jq_event(ctx, 'start_now', j.job_id::text, had_running::text);
        ctx := jq_start(ctx, j.job_id, false, j);
        RETURN (ctx - 'started') || jsonb_build_object('job', ctx->'started');
    END IF;
    -- LockedQueue.enter_line(), then block(): a pause's hold noted, its place in the global line when it
    -- joined (the counter, less the lower-priority jobs behind it), what it waits for; then its line rows.
    j.held := jq_paused_any() AND cardinality(jq_paused_among(j.required_models)) > 0;
    behind := (SELECT count(*) FROM jobs WHERE status = 'pending' AND priority < j.priority);
    UPDATE job_queue_counters SET pending = pending + 1 WHERE id = 1 RETURNING pending INTO waiting;
    IF NOT FOUND THEN
        waiting := (SELECT count(*) FROM jobs WHERE status = 'pending') + 1;  -- this job is not written yet
        INSERT INTO job_queue_counters (id, pending) VALUES (1, waiting)
            ON CONFLICT (id) DO UPDATE SET pending = EXCLUDED.pending;
    END IF;
    j.queue_position := waiting - behind;
    j.blocked_by_job_id := verdict.blocker;
    j.conflict_reason := verdict.reason;
    j.queued_at := p_now;
    INSERT INTO jobs SELECT j.*;
    INSERT INTO job_model_lines (job_id, model, priority, created_at, held, owner_key)
        SELECT j.job_id, e.name, j.priority, j.created_at, j.held, coalesce(j.owner_id, 0)
        FROM jsonb_array_elements_text(j.required_models) WITH ORDINALITY AS e(name, n) ORDER BY e.n;
    IF j.kind <> 'normal' THEN
        ctx := jq_event(ctx, 'blocked_changed', j.job_id::text, j.kind, verdict.blocker::text);
    END IF;
    ctx := jq_event(ctx, 'blocked', j.job_id::text, verdict.reason, verdict.blocker::text);
    INSERT INTO job_queue_log (job_id, job_type, event_type, conflict_reason, created_at, details)
        VALUES (j.job_id, j.kind, 'blocked', verdict.reason, p_now,
                jsonb_build_object('blocked_by_job_id', verdict.blocker::text, 'previous', NULL));
    RETURN ctx || jsonb_build_object('job', to_jsonb(j));
END $$;

-- _report() (services/jobs.py) for the outcomes that need no more than the rules: a stale call refused, a completion,
-- a failure with no attempt left. Anything else (a cancel asked for, a retry) answers
-- {"outcome": "python"} having changed nothing, and the caller takes the Python path.
CREATE OR REPLACE FUNCTION jq_finish(
    p_job uuid, p_attempt int, p_status text, p_result jsonb, p_error text, p_retry boolean,
    p_take_next boolean, p_now timestamptz, p_slots int, p_lease int
) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    ctx jsonb := jsonb_build_object('events', '[]'::jsonb, 'enqueue', '[]'::jsonb, 'taken', 'null'::jsonb,
                                    'take_next', p_take_next, 'now', p_now, 'slots', p_slots, 'lease', p_lease);
    j jobs;
    allowed int;
BEGIN
    SELECT * INTO j FROM jobs WHERE job_id = p_job;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('outcome', 'python');
    END IF;
    IF j.status <> 'running' OR j.attempt <> p_attempt OR (p_status = 'cancelled' AND j.cancel_requested_at IS NULL) THEN
        INSERT INTO job_queue_log (job_id, job_type, event_type, conflict_reason, created_at, details)
            VALUES (j.job_id, j.kind, 'refused', NULL, p_now, jsonb_build_object(
                'wanted', p_status, 'status', j.status, 'attempt', j.attempt, 'caller_attempt', p_attempt));
        RETURN jsonb_build_object('outcome', 'refused', 'job', to_jsonb(j));
    END IF;
    IF p_status = 'failed' AND j.cancel_requested_at IS NULL AND p_retry THEN
        allowed := coalesce(
            (SELECT min(c.max_attempts) FROM model_catalog c WHERE j.required_models ? c.name), 1);
        IF j.attempt < allowed THEN
            RETURN jsonb_build_object('outcome', 'python');
        END IF;
    END IF;
    IF NOT (p_status = 'completed' OR (p_status = 'failed' AND j.cancel_requested_at IS NULL)) OR jq_policies_in_use() THEN
        RETURN jsonb_build_object('outcome', 'python');
    END IF;
    -- transitions.job_ended + job_end()
    UPDATE jobs SET status = p_status, completed_at = p_now,
            result = CASE WHEN p_result IS NULL THEN NULL ELSE p_result END,
            error = CASE WHEN p_status = 'completed' THEN NULL ELSE p_error END,
            lease_expires_at = NULL
        WHERE job_id = p_job AND status = 'running'
        RETURNING * INTO j;
    ctx := jq_event(ctx, 'ended', j.job_id::text, p_status);
    UPDATE job_queue_state SET active_job_id = NULL, active_job_type = NULL, active_models = '[]'::jsonb,
            started_at = NULL
        WHERE active_job_id = p_job;
    INSERT INTO job_queue_log (job_id, job_type, event_type, conflict_reason, created_at, details)
        VALUES (j.job_id, j.kind, p_status, NULL, p_now,
                jsonb_build_object('attempt', j.attempt) || CASE WHEN j.error IS NOT NULL
                    THEN jsonb_build_object('error', j.error) ELSE '{}'::jsonb END);
    ctx := jq_settle_after(ctx, ARRAY[p_job]);
    RETURN (ctx - 'started') || jsonb_build_object('outcome', 'ended', 'job', to_jsonb(j));
END $$;
