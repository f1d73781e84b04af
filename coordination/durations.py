"""Durations as an operator reads them, wherever the console, the admin or the history show one."""


def span(seconds: float) -> str:
    """A duration as an operator reads it: < 1 s, 12 s, 3 min 5 s, 1 h, 2 h 10 min."""
    if seconds < 0.5:
        return "< 1 s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s" if seconds % 60 else f"{seconds // 60} min"
    hours, minutes = seconds // 3600, seconds % 3600 // 60
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
