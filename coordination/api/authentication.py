"""API tokens as `Authorization: Token <key>` (DRF's scheme, as the usage guide's clients send it) or
`Authorization: Bearer <key>`, as most HTTP clients and libraries send a token.

The same key either way. `/metrics` also takes `Bearer`, with its own token (METRICS_TOKEN): a
scraper's credential, not a user's (coordination/metrics.py).
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import TokenAuthentication


class BearerTokenAuthentication(TokenAuthentication):
    keyword = "Bearer"


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """The schema lists it beside `Token` (drf-spectacular's own extension would name both tokenAuth)."""

    target_class = BearerTokenAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An API token, the same key as `Token <key>`."}
