"""A dependency outside the service that cannot be reached: not a bug, and no traceback.

Adapters raise these for what they cannot reach, having reported the failure
to app.outages, which logs an outage once. The same work may succeed once
the dependency is back: callers retry later, or answer 503.
"""


class Unavailable(Exception):
    dependency = "a dependency"

    def __init__(self, reason: str, dependency: str | None = None) -> None:
        super().__init__(reason)
        if dependency is not None:
            self.dependency = dependency


class BrokerUnavailable(Unavailable):
    dependency = "redis"


class MailUnavailable(Unavailable):
    dependency = "mail"
