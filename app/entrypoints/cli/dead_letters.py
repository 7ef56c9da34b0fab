"""``allocation dead-letters``: what the operator sees and does with the dead-letter list.

Each function prints its report and returns the exit code: 0 when all went
well, 1 when an id is unknown or a replayed message failed again.
"""

from __future__ import annotations

import json
import sys

from app.adapters.dead_letters import AbstractDeadLetters, DeadLetter
from app.entrypoints.messaging.policy import MessagePolicy, Received


def _error(letter: DeadLetter) -> str:
    return f"{letter.error_type}: {letter.error}".replace("\n", " ")


async def show(dead_letters: AbstractDeadLetters, as_json: bool) -> int:
    letters = await dead_letters.entries()
    if as_json:
        print(json.dumps([letter.as_dict() for letter in letters], indent=2, ensure_ascii=False))
        return 0
    if not letters:
        print(f"no dead letters on {dead_letters.key}")
        return 0
    for letter in letters:
        error = _error(letter)
        error = error if len(error) <= 80 else error[:77] + "..."
        entry = f"  entry={letter.stream_id}" if letter.stream_id else ""
        print(
            f"{letter.id}  {letter.failed_at}  attempts={letter.attempts}  "
            f"{error}{entry}  {letter.preview()}"
        )
    print(f"{len(letters)} dead letter{'s' if len(letters) != 1 else ''} on {dead_letters.key}")
    return 0


async def replay(
    dead_letters: AbstractDeadLetters, policy: MessagePolicy, letter_id: str | None
) -> int:
    """Apply each entry as the worker would; take it off the list once that is settled.

    A stream entry's letter keeps the entry's place: if a later entry for
    the batch was applied meanwhile, the replay changes nothing.
    """
    ids = [letter_id] if letter_id else [letter.id for letter in await dead_letters.entries()]
    if not ids:
        print(f"no dead letters on {dead_letters.key}")
    code = 0
    for id_ in ids:
        # Whoever claims the entry replays it; anyone else finds it taken. It
        # stays on the list until the replay is settled.
        claim = await dead_letters.claim(id_)
        if claim is None:
            print(f"{id_}: no such dead letter (replayed or dropped meanwhile?)", file=sys.stderr)
            code = 1
            continue
        letter = claim.letter
        received = Received("replay", letter.channel)
        outcome = await policy.handle_now(letter.raw(), received, earlier=letter)
        if outcome.dead_letter is None or outcome.kept:
            await dead_letters.settle(claim)  # applied, or its new entry is stored
        if outcome.superseded:
            print(f"{id_}: not applied: a later change to the batch was applied already")
            continue
        if outcome.dead_letter is None:
            print(f"{id_}: applied")
            continue
        code = 1
        again = outcome.dead_letter
        where = (
            f"back on the list, {again.attempts} attempts"
            if outcome.kept
            else "its new error could not be stored; it stays on the list as it was"
        )
        print(f"{id_}: failed again ({_error(again)}); {where}")
    return code


async def drop(dead_letters: AbstractDeadLetters, letter_id: str | None) -> int:
    if letter_id is None:
        count = await dead_letters.clear()
        print(f"dropped {count} dead letter{'s' if count != 1 else ''}")
        return 0
    if await dead_letters.take(letter_id) is None:
        print(f"{letter_id}: no such dead letter", file=sys.stderr)
        return 1
    print("dropped 1 dead letter")
    return 0
