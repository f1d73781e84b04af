"""The usage guide's SQL, verbatim (its trailing spaces included), for the tests that run it."""

STATE = "SELECT * FROM job_queue_state;"
QUEUED = """
SELECT 
    job_id, 
    job_type, 
    model,
    blocked_by_job_id, 
    conflict_reason,
    queued_at
FROM jobs
WHERE blocked_by_job_id IS NOT NULL
ORDER BY queued_at ASC;
"""
EVENTS = """
SELECT 
    job_id, 
    job_type, 
    event_type, 
    conflict_reason,
    created_at
FROM job_queue_log
ORDER BY created_at DESC
LIMIT 20;
"""
CLEAR_STALE = """
UPDATE jobs 
SET blocked_by_job_id = NULL, 
    conflict_reason = NULL, 
    queued_at = NULL
WHERE blocked_by_job_id IS NOT NULL
  AND status = 'pending';
"""
RESET_STATE = """
UPDATE job_queue_state 
SET active_job_id = NULL, 
    active_job_type = NULL, 
    active_models = '[]'::jsonb
WHERE id = 1;
"""
NULL_MODELS = "SELECT job_id, model, required_models FROM jobs WHERE required_models IS NULL;"
PRUNE = """
DELETE FROM job_queue_log 
WHERE created_at < NOW() - INTERVAL '7 days';
"""
BLOCKED_LAST_HOUR = """
SELECT COUNT(*) as blocked_jobs
FROM job_queue_log
WHERE event_type = 'blocked'
  AND created_at > NOW() - INTERVAL '1 hour';
"""
AVG_QUEUE_TIME = """
SELECT AVG(EXTRACT(EPOCH FROM (started_at - queued_at))) as avg_queue_seconds
FROM jobs
WHERE queued_at IS NOT NULL
  AND started_at IS NOT NULL;
"""
