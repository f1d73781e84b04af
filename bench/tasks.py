def noop() -> None:
    """The bare django-q2 baseline's task: does nothing, so only the queue's own cost is measured."""

