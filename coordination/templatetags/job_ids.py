"""Job ids as operators read them: the first 8 characters, as git shortens a commit, with the whole
id in a title to hover over and in the link to the job's page. For the console's templates
(`{% load job_ids %}`) and the admin's lists."""

import re

from django import template
from django.urls import reverse
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

SHORT = 8
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


@register.filter
def short_id(job_id) -> str:
    return str(job_id)[:SHORT] if job_id else ""


@register.filter
def job_link(job_id) -> SafeString:
    """The job's short id, linking to its page."""
    if not job_id:
        return mark_safe("")
    url = reverse("admin:coordination_job_change", args=[str(job_id)])
    return format_html('<a class="job-id" href="{}" title="{}">{}</a>', url, str(job_id), short_id(job_id))


@register.filter
def linked_ids(text, limit=None) -> SafeString:
    """`text` (a reason, an event's details) with every job id in it shortened and linked. With a
    `limit`, its words are cut after that many characters ("…"), but never its job ids: what a job
    waits for is the part an operator needs (the whole text is for a title attribute)."""
    if not text:
        return mark_safe("")
    left = int(limit) if limit else None
    pieces, last = [], 0
    for match in UUID.finditer(text):
        pieces += [("text", text[last:match.start()]), ("id", match.group())]
        last = match.end()
    pieces.append(("text", text[last:]))
    shown, after_cut = [], []
    for kind, piece in pieces:
        if kind == "id":
            (after_cut if after_cut or (left is not None and left < 0) else shown).append(job_link(piece))
        elif left is None or (left >= 0 and len(piece) <= left):
            shown.append(escape(piece))
            left = None if left is None else left - len(piece)
        elif left >= 0:
            kept = piece[:left]
            if piece[left:left + 1] not in (" ", "") and " " in kept:
                kept = kept[:kept.rfind(" ")]  # at a word's end
            shown.append(escape(kept.rstrip(" ;:,(")) + "…")
            left = -1
    if after_cut:
        shown.append(" " + ", ".join(after_cut))
    return mark_safe("".join(shown))
