import base64
import time
from datetime import datetime, timezone

from coordination.runners.base import RunnerCall, RunnerError, RunnerStopped
from coordination.runners.results import runner_result

# The file a simulated job "makes", by its model's media type: its source_url is the output.
CONTENT_TYPES = {"image": "image/png", "video": "video/mp4"}
# Its bytes, for the copy that keeps it (coordination/outputs/copy.py): a 1x1 PNG, an MP4's first box.
SIMULATED_BYTES = {
    "image/png": base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="),
    "video/mp4": b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom",
}


class SimulatedRunner:
    """Stands in for a real model: takes `params.simulate_seconds` (or the model's default) and
    raises when `params.simulate_fail` is set, so demos and tests can shape a queue. Its output is
    `simulated://<model>/<job_id>`, listed as the job's one file (typed by the model's media type)."""

    tick = 0.1

    def run(self, call: RunnerCall) -> dict:
        began = datetime.now(timezone.utc)
        seconds = float(call.params.get("simulate_seconds", call.default_seconds))
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if call.should_stop():
                raise RunnerStopped(f"Stopped after {seconds - left:.1f} of {seconds} s")
            time.sleep(min(self.tick, left))
        if call.params.get("simulate_fail"):
            message = call.params["simulate_fail"]
            raise RunnerError(message if isinstance(message, str) else f"Simulated failure of {call.model}")
        output = f"simulated://{call.model}/{call.job_id}"
        content_type = CONTENT_TYPES.get(call.media_type)
        return runner_result(
            output,
            files=[{"url": output, "content_type": content_type} if content_type else output],
            runner="simulated",
            model=call.model,
            seconds=seconds,
            # When the model call began: what dispatch latency is measured to (bench/).
            runner_started_at=began.isoformat(),
            prompt=call.prompt,
            inputs=call.inputs,
        )
