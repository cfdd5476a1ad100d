"""A Realtime session with the plain `websockets` client (compression on, as by default).

    python realtime_websockets.py ws://127.0.0.1:PORT/v1/realtime?model=gpt-realtime

Checks that permessage-deflate was negotiated, that the session starts with
session.created, and that a text response has the expected event sequence and a
response.done with usage; prints the event types and exits non-zero otherwise.
"""

import json
import sys

from websockets.sync.client import connect

url = sys.argv[1]


def fail(why):
    sys.exit(f"FAIL: {why}")


with connect(url, additional_headers={"Authorization": "Bearer sk-demo", "OpenAI-Beta": "realtime=v1"}) as ws:
    extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
    if "permessage-deflate" not in extensions:
        fail(f"compression not negotiated: {extensions!r}")
    print("extensions:", extensions)

    first = json.loads(ws.recv())
    if first["type"] != "session.created" or not first["session"].get("model"):
        fail(f"first event: {first}")
    ws.send(json.dumps({"type": "session.update", "session": {"modalities": ["text"]}}))
    if json.loads(ws.recv())["type"] != "session.updated":
        fail("no session.updated")
    ws.send(json.dumps({
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello there"}]},
    }))
    if json.loads(ws.recv())["type"] != "conversation.item.created":
        fail("no conversation.item.created")
    ws.send(json.dumps({"type": "response.create"}))
    events = []
    while True:
        event = json.loads(ws.recv())
        events.append(event)
        if event["type"] == "response.done":
            break
    kinds = [e["type"] for e in events]
    print(" ".join(kinds))
    deltas = [e["delta"] for e in events if e["type"] == "response.text.delta"]
    expected = (
        ["response.created", "response.output_item.added", "response.content_part.added"]
        + ["response.text.delta"] * len(deltas)
        + ["response.text.done", "response.content_part.done", "response.output_item.done", "response.done"]
    )
    if not deltas or kinds != expected:
        fail(f"event sequence: {kinds}")
    text = "".join(deltas)
    if not text.startswith("You said 2 words. "):
        fail(f"text: {text!r}")
    response = events[-1]["response"]
    usage = response["usage"]
    if response["status"] != "completed" or usage["output_tokens"] != len(deltas):
        fail(f"response.done: {response}")
    if usage["total_tokens"] != usage["input_tokens"] + usage["output_tokens"]:
        fail(f"usage: {usage}")
    if "cached_tokens" not in usage["input_token_details"] or "audio_tokens" not in usage["output_token_details"]:
        fail(f"usage details: {usage}")
    # long enough to be compressed both ways
    ws.send(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "word " * 2000}]}}))
    if json.loads(ws.recv())["type"] != "conversation.item.created":
        fail("no conversation.item.created for a long item")
    ws.ping(b"hi").wait(5)
print("OK", json.dumps(usage))
