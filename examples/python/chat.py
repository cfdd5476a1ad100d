"""The official OpenAI Python SDK through tokentap: nothing but OPENAI_BASE_URL changes.

    cargo run --release -- --demo          # in one terminal
    pip install openai
    OPENAI_BASE_URL=http://127.0.0.1:8080/v1 python examples/python/chat.py

Makes one plain and one streamed chat call, prints the usage each reports, then
shows the same numbers on tokentap's /metrics page.
"""

import os
import sys
import urllib.request

from openai import OpenAI

base_url = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1")
client = OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "sk-demo"))
model = os.environ.get("MODEL", "gpt-4o-mini")

reply = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is OpenTelemetry?"}],
)
print("reply:", reply.choices[0].message.content)
print(f"usage: prompt={reply.usage.prompt_tokens} completion={reply.usage.completion_tokens} total={reply.usage.total_tokens}")

stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "And what is a span?"}],
    stream=True,
    stream_options={"include_usage": True},
)
text, usage = [], None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        text.append(chunk.choices[0].delta.content)
    if chunk.usage:
        usage = chunk.usage
print("stream:", "".join(text))
if usage is None:
    sys.exit("the stream reported no usage")
print(f"stream usage: prompt={usage.prompt_tokens} completion={usage.completion_tokens} total={usage.total_tokens}")

# tokentap saw both calls
metrics_url = base_url.rsplit("/v1", 1)[0] + "/metrics"
page = urllib.request.urlopen(metrics_url).read().decode()
lines = [l for l in page.splitlines() if l.startswith("llm_tokens_used_total")]
print("\n".join(lines))
if not lines:
    sys.exit("no llm_tokens_used_total on " + metrics_url)
