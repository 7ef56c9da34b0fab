"""``GET /asyncapi.json``: the events, documented as /openapi.json documents the routes.

An AsyncAPI 3.0 document with a channel for each subject on each transport
(Redis pub/sub, Redis Streams, NATS JetStream). The message schemas are
generated from the models the code validates with (ChangeBatchQuantityMessage
in, LineAllocatedMessage and HoldChangedMessage out): change a model, and the document changes.
A Redis stream entry carries the same fields, each as text; its schema is
derived from the model's. ``GET /asyncapi`` renders the document as a page,
on the server: no script, nothing fetched from elsewhere.
"""

from __future__ import annotations

import functools
import html
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import HTMLResponse, JSONResponse

from app.entrypoints.http.dependencies import ServiceSettings
from app.wire import (
    CHANGE_BATCH_QUANTITY,
    HOLD_CHANGED,
    LINE_ALLOCATED,
    ChangeBatchQuantityMessage,
    HeldLineMessage,
    HoldChangedMessage,
    LineAllocatedMessage,
)

router = APIRouter(include_in_schema=False)

# (id, address, server, transport, what the service does, message id, how the transport carries it)
_CHANNELS = [
    (
        "changeBatchQuantityPubSub",
        CHANGE_BATCH_QUANTITY,
        "redis",
        "Redis pub/sub",
        "receive",
        "changeBatchQuantity",
        "A JSON document per message, applied as it arrives by whichever worker is subscribed.",
    ),
    (
        "changeBatchQuantityStream",
        CHANGE_BATCH_QUANTITY,
        "redis",
        "Redis Streams",
        "receive",
        "changeBatchQuantityEntry",
        "A stream entry whose fields are the message's, read by the workers' consumer group "
        "(STREAM_GROUP) and acknowledged once applied, skipped or dead-lettered.",
    ),
    (
        "changeBatchQuantityJetStream",
        CHANGE_BATCH_QUANTITY,
        "nats",
        "NATS JetStream",
        "receive",
        "changeBatchQuantity",
        "A JSON document per message, in the stream holding the subject, read by the durable "
        "consumer NATS_DURABLE and acknowledged once committed.",
    ),
    (
        "lineAllocatedPubSub",
        LINE_ALLOCATED,
        "redis",
        "Redis pub/sub",
        "send",
        "lineAllocated",
        "A JSON document per allocation, at least once: de-duplicate by event_id.",
    ),
    (
        "lineAllocatedStream",
        LINE_ALLOCATED,
        "redis",
        "Redis Streams",
        "send",
        "lineAllocatedEntry",
        "A stream entry per allocation, for consumers that must not miss one; about "
        "LINE_ALLOCATED_STREAM_MAXLEN entries are kept.",
    ),
    (
        "lineAllocatedJetStream",
        LINE_ALLOCATED,
        "nats",
        "NATS JetStream",
        "send",
        "lineAllocatedJetStream",
        "A JSON document per allocation, with Nats-Msg-Id = event_id: a re-publish within "
        "the stream's duplicate window is dropped, so each allocation is stored once.",
    ),
    (
        "holdChangedPubSub",
        HOLD_CHANGED,
        "redis",
        "Redis pub/sub",
        "send",
        "holdChanged",
        "A JSON document per change of a hold, at least once: de-duplicate by event_id.",
    ),
    (
        "holdChangedStream",
        HOLD_CHANGED,
        "redis",
        "Redis Streams",
        "send",
        "holdChangedEntry",
        "A stream entry per change of a hold (`lines` as JSON text), for consumers that must "
        "not miss one; about LINE_ALLOCATED_STREAM_MAXLEN entries are kept.",
    ),
    (
        "holdChangedJetStream",
        HOLD_CHANGED,
        "nats",
        "NATS JetStream",
        "send",
        "holdChangedJetStream",
        "A JSON document per change of a hold, with Nats-Msg-Id = event_id, stored once.",
    ),
]

_MSG_ID = {
    "type": "object",
    "properties": {"Nats-Msg-Id": {"type": "string", "description": "The event's id."}},
    "required": ["Nats-Msg-Id"],
}


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return schema


def _as_text(schema: dict[str, Any], title: str) -> dict[str, Any]:
    """A stream entry's schema: the message's fields, each a string (null as empty)."""
    properties = {
        name: {"type": "string", "description": f"{field.get('description', '')} As text."}
        for name, field in schema["properties"].items()
    }
    return {
        "title": title,
        "type": "object",
        "properties": properties,
        "required": schema.get("required", []),
    }


def _message(name: str, title: str, schema: str, summary: str, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "title": title,
        "summary": summary,
        "contentType": "application/json",
        "payload": {"$ref": f"#/components/schemas/{schema}"},
        **more,
    }


_PREFIXED = (
    "Every channel, stream, subject and consumer group of this deployment is named "
    "with the `prefix` variable first (CHANNEL_PREFIX; empty: the book's names)."
)


def _prefix(prefix: str) -> dict[str, str]:
    return {"default": prefix, "description": "CHANNEL_PREFIX, before every name."}


@functools.cache
def document(prefix: str = "") -> dict[str, Any]:
    """The document of a deployment whose CHANNEL_PREFIX is ``prefix``."""
    change = _schema(ChangeBatchQuantityMessage)
    allocated = _schema(LineAllocatedMessage)
    held = _schema(HoldChangedMessage)
    schemas = {
        "HoldChanged": held,
        "HoldChangedEntry": _as_text(held, "hold_changed stream entry"),
        "HeldLineMessage": _schema(HeldLineMessage),
        "ChangeBatchQuantity": change,
        "ChangeBatchQuantityEntry": _as_text(change, "change_batch_quantity stream entry"),
        "LineAllocated": allocated,
        "LineAllocatedEntry": _as_text(allocated, "line_allocated stream entry"),
    }
    change_summary = str(ChangeBatchQuantityMessage.__doc__).strip()
    allocated_summary = str(LineAllocatedMessage.__doc__).strip()
    held_summary = str(HoldChangedMessage.__doc__).strip()
    messages = {
        "holdChanged": _message(HOLD_CHANGED, "Hold changed", "HoldChanged", held_summary),
        "holdChangedEntry": _message(
            HOLD_CHANGED, "Hold changed (stream entry)", "HoldChangedEntry", held_summary
        ),
        "holdChangedJetStream": _message(
            HOLD_CHANGED, "Hold changed (JetStream)", "HoldChanged", held_summary, headers=_MSG_ID
        ),
        "changeBatchQuantity": _message(
            CHANGE_BATCH_QUANTITY,
            "Change a batch's quantity",
            "ChangeBatchQuantity",
            change_summary,
        ),
        "changeBatchQuantityEntry": _message(
            CHANGE_BATCH_QUANTITY,
            "Change a batch's quantity (stream entry)",
            "ChangeBatchQuantityEntry",
            change_summary,
        ),
        "lineAllocated": _message(
            LINE_ALLOCATED, "Line allocated", "LineAllocated", allocated_summary
        ),
        "lineAllocatedEntry": _message(
            LINE_ALLOCATED, "Line allocated (stream entry)", "LineAllocatedEntry", allocated_summary
        ),
        "lineAllocatedJetStream": _message(
            LINE_ALLOCATED,
            "Line allocated (JetStream)",
            "LineAllocated",
            allocated_summary,
            headers=_MSG_ID,
        ),
    }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for key, name, server, transport, action, message, how in _CHANNELS:
        address = prefix + name
        channels[key] = {
            "address": address,
            "title": f"{address} on {transport}",
            "description": how,
            "servers": [{"$ref": f"#/servers/{server}"}],
            "messages": {message: {"$ref": f"#/components/messages/{message}"}},
        }
        operations[f"{action}_{key}"] = {
            "action": action,
            "title": f"{'Consume' if action == 'receive' else 'Publish'} {address} on {transport}",
            "channel": {"$ref": f"#/channels/{key}"},
            "messages": [{"$ref": f"#/channels/{key}/messages/{message}"}],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Allocation service events",
            "version": "1.0.0",
            "description": "The events that cross the service's edge: it consumes "
            f"`{CHANGE_BATCH_QUANTITY}` and publishes `{LINE_ALLOCATED}` and "
            f"`{HOLD_CHANGED}`, on Redis "
            "(REDIS_URL) and on NATS JetStream (NATS_URL), as EVENT_BROKERS says.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "redis": {
                "host": "{host}",
                "protocol": "redis",
                "description": "Redis, as REDIS_URL names it: pub/sub and Streams. " + _PREFIXED,
                "variables": {"host": {"default": "localhost:6379"}, "prefix": _prefix(prefix)},
            },
            "nats": {
                "host": "{host}",
                "protocol": "nats",
                "description": "NATS with JetStream, as NATS_URL names it. " + _PREFIXED,
                "variables": {"host": {"default": "localhost:4222"}, "prefix": _prefix(prefix)},
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


@router.get("/asyncapi.json")
async def asyncapi_json(settings: ServiceSettings) -> JSONResponse:
    return JSONResponse(document(settings.channel_prefix))


@router.get("/asyncapi")
async def asyncapi_page(request: Request, settings: ServiceSettings) -> HTMLResponse:
    root: str = request.scope.get("root_path", "")
    return HTMLResponse(page(document(settings.channel_prefix), f"{root}/asyncapi.json"))


def page(doc: dict[str, Any], source: str) -> str:
    """The document as HTML: each channel, what the service does on it, and its fields."""
    e = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{e(doc['info']['title'])} - AsyncAPI</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;"
        "text-align:left;vertical-align:top}code{background:#f4f4f4}</style></head><body>",
        f"<h1>{e(doc['info']['title'])}</h1>",
        f"<p>{e(doc['info']['description'])}</p>",
        f"<p>AsyncAPI {e(doc['asyncapi'])}: <a href='{e(source)}'>{e(source)}</a></p>",
    ]
    components = doc["components"]
    for operation in doc["operations"].values():
        key = operation["channel"]["$ref"].rsplit("/", 1)[1]
        channel = doc["channels"][key]
        [message_ref] = channel["messages"].values()
        message = components["messages"][message_ref["$ref"].rsplit("/", 1)[1]]
        schema = components["schemas"][message["payload"]["$ref"].rsplit("/", 1)[1]]
        parts += [
            f"<h2 id='{e(key)}'>{e(operation['title'])}</h2>",
            f"<p>Channel <code>{e(channel['address'])}</code>. {e(channel['description'])}</p>",
            f"<p>{e(message['title'])}: {e(message['summary'])}</p>",
            _fields(schema, message.get("headers")),
        ]
    parts.append("</body></html>")
    return "".join(parts)


def _fields(schema: dict[str, Any], headers: dict[str, Any] | None) -> str:
    e = html.escape
    required = set(schema.get("required", []))
    rows = ["<table><tr><th>field</th><th>type</th><th>required</th><th>what</th></tr>"]
    for name, field in schema["properties"].items():
        kinds = [field.get("type")] + [option.get("type") for option in field.get("anyOf", [])]
        kind = " or ".join(str(k) for k in kinds if k)
        rows.append(
            f"<tr><td><code>{e(name)}</code></td><td>{e(kind)}</td>"
            f"<td>{'yes' if name in required else 'no'}</td>"
            f"<td>{e(field.get('description', ''))}</td></tr>"
        )
    for name, field in (headers or {}).get("properties", {}).items():
        rows.append(
            f"<tr><td>header <code>{e(name)}</code></td><td>{e(field['type'])}</td>"
            f"<td>yes</td><td>{e(field.get('description', ''))}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)
