"""What /docs and /openapi.json say about the service as a whole."""

from typing import Any

DESCRIPTION = """
Allocates warehouse stock (batches) to customer order lines.

Writes are commands: `POST /allocate` answers **202 Accepted** with a
`Location` header, and the allocation is read back there, from a read model
that is up to date by the time the 202 is sent. Every error answers with
`{"message": ...}`; invalid input is a 422 that names the field.
"""

TAGS: list[dict[str, Any]] = []
