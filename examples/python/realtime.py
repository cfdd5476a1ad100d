"""The official OpenAI Python SDK's Realtime client through tokentap.

    cargo run --release -- --demo          # in one terminal
    pip install 'openai[realtime]'
    OPENAI_BASE_URL=http://127.0.0.1:8080/v1 python examples/python/realtime.py

The SDK builds the WebSocket URL from the base URL (ws://…/v1/realtime?model=…),
so nothing but OPENAI_BASE_URL changes. Opens a session, adds a user message,
asks for a text reply, prints its deltas and the usage of `response.done`;
exits non-zero when the session doesn't go that way.
"""

import os
import sys

from openai import OpenAI

base_url = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1")
client = OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "sk-demo"))
model = os.environ.get("MODEL", "gpt-realtime")

with client.realtime.connect(model=model) as conn:
    first = conn.recv()
    if first.type != "session.created":
        sys.exit(f"expected session.created first, got {first.type}")
    print("session:", first.session.model if hasattr(first.session, "model") else first.session)
    conn.conversation.item.create(
        item={
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "What does a realtime span show?"}],
        }
    )
    conn.response.create(response={"output_modalities": ["text"]})
    text, done = [], None
    for event in conn:
        if event.type == "error":
            sys.exit(f"error event: {event.error}")
        if event.type in ("response.output_text.delta", "response.text.delta"):
            text.append(event.delta)
            print(event.delta, end="", flush=True)
        if event.type == "response.done":
            done = event
            break
    print()

if done is None:
    sys.exit("the session ended without response.done")
if done.response.status != "completed":
    sys.exit(f"response.done with status {done.response.status}")
usage = done.response.usage
if usage is None or not usage.total_tokens:
    sys.exit("response.done reported no usage")
if not text:
    sys.exit("no text deltas")
print(
    f"usage: input={usage.input_tokens} (cached {usage.input_token_details.cached_tokens}) "
    f"output={usage.output_tokens} total={usage.total_tokens}"
)
