"""`?limit=` and `?offset=` of a list (GET /jobs): checked like every other query parameter.

DRF's LimitOffsetPagination takes a value it cannot read (`?limit=abc`, `?offset=-1`) for its default
and answers 200, so a client's mistake looks like an answer. Here such a value is a 400 that names
the parameter, and `limit` has a maximum (LIST_MAX_LIMIT, in docs/api.md): one request cannot ask
for the whole table.
"""

import re

from rest_framework import pagination
from rest_framework.exceptions import ValidationError

LIST_MAX_LIMIT = 500


def query_int(request, name: str, *, default: int, minimum: int, maximum: int | None = None) -> int:
    """The query parameter `name` as a whole number within its bounds; `default` when absent or empty."""
    raw = request.query_params.get(name, "")
    if raw == "":
        return default
    value = int(raw) if re.fullmatch(r"[0-9]{1,9}", raw) else None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f"{minimum} or more"
        raise ValidationError({name: [f"must be a whole number {bounds}, not '{raw[:100]}'."]})
    return value


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    """?limit= (1 to LIST_MAX_LIMIT, PAGE_SIZE when absent) and ?offset= (0 or more)."""

    max_limit = LIST_MAX_LIMIT

    def get_limit(self, request) -> int:
        return query_int(request, self.limit_query_param, default=self.default_limit, minimum=1, maximum=self.max_limit)

    def get_offset(self, request) -> int:
        return query_int(request, self.offset_query_param, default=0, minimum=0)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.limit_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_limit, default=self.default_limit)
                parameter["description"] = f"How many jobs to answer: 1 to {self.max_limit} ({self.default_limit} when absent)."
            elif parameter["name"] == self.offset_query_param:
                parameter["schema"].update(minimum=0, default=0)
        return parameters
