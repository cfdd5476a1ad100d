"""Two turns of a Realtime session (one text, one audio) with the plain `websockets` client.

    python realtime_session.py ws://HOST:PORT/v1/realtime?model=gpt-realtime

Compression is on, as by default. Prints one JSON object: the 101's
`traceresponse` and `Sec-WebSocket-Extensions`, and for each turn the
`response.done` as received (id, status, usage); exits non-zero when a turn
doesn't end in a completed `response.done`.
"""

import json
import sys

from websockets.sync.client import connect

url = sys.argv[1]


def turn(ws, text, modalities):
    ws.send(json.dumps({
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
    }))
    ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": modalities}}))
    while True:
        event = json.loads(ws.recv())
        if event["type"] == "error":
            sys.exit(f"FAIL: error event {event}")
        if event["type"] == "response.done":
            r = event["response"]
            if r["status"] != "completed" or not r.get("usage"):
                sys.exit(f"FAIL: response.done {r}")
            return {"id": r["id"], "status": r["status"], "usage": r["usage"]}


with connect(url, additional_headers={"Authorization": "Bearer sk-demo"}) as ws:
    headers = ws.response.headers
    if json.loads(ws.recv())["type"] != "session.created":
        sys.exit("FAIL: no session.created")
    turns = [
        turn(ws, "hello there, how are you", ["text"]),
        turn(ws, "say something out loud " + "please " * 300, ["audio"]),
    ]
print(json.dumps({
    "traceresponse": headers.get("traceresponse", ""),
    "extensions": headers.get("Sec-WebSocket-Extensions", ""),
    "turns": turns,
}))
