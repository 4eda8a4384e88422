"""The official `openai` Python client against a live `tributary dev` (driven by
tests/serve_openai.rs). Usage: openai_client.py BASE_URL API_KEY BASE_MODEL [ADAPTER_NAME]

Checks chat and completions, streaming and not, usage, finish_reason, unique ids, the
models list, and (when given) an adapter served by name; prints one JSON line of what it
saw, and exits non-zero on the first failed check."""

import json
import sys

import openai

base_url, api_key, base_model = sys.argv[1], sys.argv[2], sys.argv[3]
adapter = sys.argv[4] if len(sys.argv) > 4 else None
client = openai.OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0, timeout=120)
seen = {}


def check(cond, what):
    if not cond:
        print(json.dumps({"failed": what, "seen": seen}, default=str))
        sys.exit(1)


def chat(model, stream=False):
    msgs = [{"role": "user", "content": "Say hello."}]
    if not stream:
        r = client.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0)
        check(r.id.startswith("chatcmpl-"), "chat id prefix")
        check(r.object == "chat.completion", "chat object")
        check(r.choices[0].finish_reason in ("stop", "length"), "chat finish_reason")
        check(r.usage.prompt_tokens > 0, "chat usage prompt tokens")
        check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "chat usage sum")
        check(r.choices[0].message.role == "assistant", "chat role")
        return r.id, r.choices[0].message.content, r.usage.completion_tokens
    chunks = list(
        client.chat.completions.create(
            model=model, messages=msgs, max_tokens=8, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )
    check(len(chunks) >= 2, "chat stream has chunks")
    check(len({c.id for c in chunks}) == 1, "one id per stream")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    check(finishes and finishes[-1] in ("stop", "length"), "chat stream finish_reason")
    check(chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0, "stream usage chunk")
    return chunks[0].id, text, chunks[-1].usage.completion_tokens


id1, text1, n1 = chat(base_model)
id2, text2, n2 = chat(base_model, stream=True)
check(id1 != id2, "ids are unique")
check(text1 == text2, "greedy streaming and non-streaming agree: %r vs %r" % (text1, text2))
seen["chat"] = {"text": text1, "completion_tokens": n1}

r = client.completions.create(model=base_model, prompt="Once upon a time", max_tokens=6, temperature=0)
check(r.id.startswith("cmpl-") and r.object == "text_completion", "completion id and object")
check(r.choices[0].finish_reason in ("stop", "length"), "completion finish_reason")
check(r.usage.completion_tokens >= 1, "completion usage")
stream = list(
    client.completions.create(model=base_model, prompt="Once upon a time", max_tokens=6, temperature=0, stream=True)
)
streamed = "".join(c.choices[0].text for c in stream if c.choices)
check(streamed == r.choices[0].text, "completion stream equals non-stream: %r vs %r" % (streamed, r.choices[0].text))
seen["completion"] = r.choices[0].text

models = client.models.list()
ids = [m.id for m in models.data]
check(base_model in ids, "base model listed")
seen["models"] = ids

if adapter:
    check(adapter in ids, "adapter %s listed" % adapter)
    aid, atext, _ = chat(adapter)
    _, atext_s, _ = chat(adapter, stream=True)
    check(atext == atext_s, "adapter greedy stream equals non-stream")
    seen["adapter_chat"] = atext

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    check(False, "unknown model refused")
except openai.NotFoundError as e:
    check("no-such-model" in str(e), "404 names the model")

bad = openai.OpenAI(base_url=base_url + "/v1", api_key="trib_wrong_key_0000000000", max_retries=0)
try:
    bad.models.list()
    check(False, "wrong key refused")
except openai.AuthenticationError:
    pass

print(json.dumps({"ok": True, "seen": seen}))
