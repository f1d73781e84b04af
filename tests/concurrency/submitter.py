"""A client process for the race test: submits jobs and workflows through the services, in its
own Python process with its own database connection. It prints "ready" once connected, and starts
when the go file appears, so that all clients submit at the same time.

    python -m tests.concurrency.submitter <index> <count> <staff user id> <go file>

Then it prints one line per accepted job: "<job_id> <status>". DJANGO_SETTINGS_MODULE, DATABASE_URL
and COORDINATOR_MAX_ACTIVE_JOBS come from the environment.
"""

import os
import random
import sys
import time


# The usage guide's workflow, and one the race test defines over three models (one shared with it).
WORKFLOWS = ["knight-style-img-to-video", "race-three-models"]


def main(index: int, count: int, staff_id: int, go_file: str) -> None:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection

    from coordination.services import job_submit
    from workflows.services import workflow_execute

    models = ["nano-banana-pro-leonardo", "motion-2.0-fast", "flux-dev", "minimax/video-01"]
    staff = get_user_model().objects.get(pk=staff_id)
    chance = random.Random(index)
    connection.ensure_connection()
    print("ready", flush=True)
    while not os.path.exists(go_file):
        time.sleep(0.005)
    for n in range(count):
        priority = chance.randint(-2, 2)
        params = {"simulate_seconds": chance.choice([0, 0, 0.01, 0.03])}
        if chance.random() < 0.2:
            job = workflow_execute(
                owner=staff,
                workflow_id=chance.choice(WORKFLOWS),
                inputs={"input_image": "https://example.com/user.jpg"},
                prompt=f"client {index} workflow {n}",
                params=params,
                priority=priority,
            )
        else:
            model = chance.choice(models)
            prompt = f"client {index} job {n}"
            job = job_submit(owner=staff, model=model, prompt=prompt, params=params, priority=priority)
        print(job.job_id, job.status, flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
