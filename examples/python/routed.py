"""A routed provider through tokentap: the client's base URL names the route.

    cargo run --release -- --demo --listen 127.0.0.1:8081            # a stand-in for Groq
    cargo run --release -- --route /groq=http://127.0.0.1:8081,provider=groq
    pip install openai
    OPENAI_BASE_URL=http://127.0.0.1:8080/groq/v1 python examples/python/routed.py

For the real thing: --route /groq=https://api.groq.com/openai (the provider `groq` is
then inferred from the host). tokentap removes the `/groq` prefix, so the upstream gets
/openai/v1/chat/completions. The script asserts what it gets and exits non-zero otherwise.
"""

import os
import sys
import urllib.request

from openai import OpenAI

base_url = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/groq/v1")
provider = os.environ.get("EXPECT_PROVIDER", "groq")
model = os.environ.get("MODEL", "llama-3.3-70b-versatile")
client = OpenAI(base_url=base_url, api_key=os.environ.get("GROQ_API_KEY", "gsk-demo"))

reply = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is OpenTelemetry?"}],
)
print("reply:", reply.choices[0].message.content)
print(f"usage: prompt={reply.usage.prompt_tokens} completion={reply.usage.completion_tokens}")
if reply.model != model or reply.usage.total_tokens <= 0:
    sys.exit(f"unexpected answer: model={reply.model} usage={reply.usage}")

stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "And what is a span?"}],
    stream=True,
)
text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
print("stream:", text)
if not text:
    sys.exit("stream: no text")

# tokentap's own pages are at its root, not under the route
root = base_url.split("/groq", 1)[0] if "/groq" in base_url else base_url.rsplit("/v1", 1)[0]
page = urllib.request.urlopen(root + "/metrics").read().decode()
lines = [
    l
    for l in page.splitlines()
    if l.startswith("llm_tokens_used_total") and f'provider="{provider}"' in l and f'model="{model}"' in l
]
print("\n".join(lines))
if not any(l.split("{", 1)[1].find('type="total"') >= 0 and float(l.rsplit(" ", 1)[1]) > 0 for l in lines):
    sys.exit(f'/metrics: no llm_tokens_used_total{{provider="{provider}",model="{model}",type="total"}}')
