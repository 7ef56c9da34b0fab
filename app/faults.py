"""A test hook: raise at a named step, to prove that step loses nothing.

Nothing is armed unless a test arms it; an unarmed check costs a dict lookup.
Steps: "after_commit" (a command committed, its events not yet dispatched),
"commit:<handler>" (an event handler did its work but has not committed),
"publish" (sending to the message broker).
"""


class InjectedFault(Exception):
    pass


class Faults:
    def __init__(self) -> None:
        self._armed: dict[str, int] = {}

    def arm(self, step: str, times: int = 1) -> None:
        self._armed[step] = times

    def disarm(self) -> None:
        self._armed.clear()

    def check(self, step: str) -> None:
        remaining = self._armed.get(step)
        if not remaining:
            return
        self._armed[step] = remaining - 1
        raise InjectedFault(step)
