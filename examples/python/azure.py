"""Azure OpenAI through tokentap: the official SDK's AzureOpenAI client, pointed at tokentap.

    cargo run --release -- --demo --provider azure.ai.openai     # in one terminal
    pip install openai
    TOKENTAP_URL=http://127.0.0.1:8080 python examples/python/azure.py

Against real Azure, run tokentap with --upstream https://YOUR-RESOURCE.openai.azure.com
(the provider is then inferred from the host) and keep your key in AZURE_OPENAI_API_KEY:
the SDK sends it in the `api-key` header, which tokentap forwards and never records.

Azure names a *deployment* in the URL (/openai/deployments/{deployment}/chat/completions);
tokentap records the deployment as the request model and prices the call by the model
version in the response. The script asserts what it gets and exits non-zero otherwise.
"""

import os
import sys
import urllib.request

from openai import AzureOpenAI

base = os.environ.get("TOKENTAP_URL", "http://127.0.0.1:8080").rstrip("/")
provider = os.environ.get("EXPECT_PROVIDER", "azure.ai.openai")
chat_deployment = os.environ.get("CHAT_DEPLOYMENT", "prod-chat")
embedding_deployment = os.environ.get("EMBEDDING_DEPLOYMENT", "text-embedding-3-small")

client = AzureOpenAI(
    azure_endpoint=base,
    api_key=os.environ.get("AZURE_OPENAI_API_KEY", "azure-demo-key"),
    api_version=os.environ.get("OPENAI_API_VERSION", "2024-10-21"),
)

# the deployment goes in `model`; the SDK puts it in the URL
reply = client.chat.completions.create(
    model=chat_deployment,
    messages=[{"role": "user", "content": "What is OpenTelemetry?"}],
)
print("reply:", reply.choices[0].message.content)
print(f"served by: {reply.model}; usage: prompt={reply.usage.prompt_tokens} completion={reply.usage.completion_tokens}")
if not reply.choices[0].message.content or reply.usage.total_tokens <= 0:
    sys.exit("chat: no content or no usage")

stream = client.chat.completions.create(
    model=chat_deployment,
    messages=[{"role": "user", "content": "And what is a span?"}],
    stream=True,
)
text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
print("stream:", text)
if not text:
    sys.exit("stream: no text")

emb = client.embeddings.create(model=embedding_deployment, input=["hello", "world"])
print(f"embeddings: {len(emb.data)} x {len(emb.data[0].embedding)} from {emb.model}; usage={emb.usage.prompt_tokens}")
if len(emb.data) != 2 or not emb.data[0].embedding or emb.usage.prompt_tokens <= 0:
    sys.exit("embeddings: unexpected answer")

# tokentap saw the calls, under the deployment names and the provider
page = urllib.request.urlopen(base + "/metrics").read().decode()
lines = [l for l in page.splitlines() if l.startswith("llm_requests_total") and f'provider="{provider}"' in l]
print("\n".join(lines))
for deployment, calls in [(chat_deployment, 2), (embedding_deployment, 1)]:
    total = sum(float(l.rsplit(" ", 1)[1]) for l in lines if f'model="{deployment}"' in l)
    if total < calls:
        sys.exit(f'/metrics: expected {calls} llm_requests_total{{model="{deployment}",provider="{provider}"}}, got {total}')
cost = [l for l in page.splitlines() if l.startswith("llm_cost_usd_total") and f'model="{chat_deployment}"' in l]
print("\n".join(cost))
if not cost or float(cost[0].rsplit(" ", 1)[1]) <= 0:
    sys.exit("/metrics: the deployment's calls were not priced (by the response model)")
