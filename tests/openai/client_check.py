"""Drives a running wattserve with the official `openai` Python client: chat and completions,
streamed and not, usage (with wattserve's energy extension) and an error. Exits non-zero with a
message on the first mismatch. Usage: client_check.py BASE_URL MODEL
"""
import sys

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused")
messages = [{"role": "user", "content": "What is a GPU?"}]


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)


# Chat, not streamed.
r = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0)
text = r.choices[0].message.content
check(r.object == "chat.completion", f"object {r.object}")
check(r.choices[0].message.role == "assistant", "role")
check(r.choices[0].finish_reason == "length", f"finish_reason {r.choices[0].finish_reason}")
check(r.usage.completion_tokens == 16, f"completion_tokens {r.usage.completion_tokens}")
check(r.usage.total_tokens == r.usage.prompt_tokens + 16, "total_tokens")
energy = (r.usage.model_extra or {}).get("energy")
check(energy and energy["joules"] > 0, f"usage.energy {energy}")

# Chat, streamed, with the usage chunk: same text.
pieces, usage, finish = [], None, []
for chunk in client.chat.completions.create(
    model=model, messages=messages, max_tokens=16, temperature=0, stream=True,
    stream_options={"include_usage": True},
):
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finish.append(c.finish_reason)
    if chunk.usage:
        usage = chunk.usage
check("".join(pieces) == text, f"streamed {''.join(pieces)!r} != {text!r}")
check(finish == ["length"], f"stream finish {finish}")
check(usage and usage.completion_tokens == 16, f"stream usage {usage}")
check((usage.model_extra or {}).get("energy", {}).get("joules", 0) > 0, "stream usage.energy")

# Completions, streamed and not, with a stop string.
r = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=30, temperature=0, stop=[" 8"])
check(r.choices[0].text == " 5, 6, 7,", f"completion {r.choices[0].text!r}")
check(r.choices[0].finish_reason == "stop", "completion finish_reason")
streamed = "".join(
    c.choices[0].text
    for c in client.completions.create(
        model=model, prompt="1, 2, 3, 4,", max_tokens=30, temperature=0, stop=[" 8"], stream=True
    )
    if c.choices
)
check(streamed == " 5, 6, 7,", f"streamed completion {streamed!r}")

# Errors come back as the client's typed exceptions.
try:
    client.chat.completions.create(model=model, messages=messages, n=2)
    check(False, "n=2 accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400 and "n = 1" in str(e), f"n=2 error: {e}")
try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    check(False, "unknown model accepted")
except openai.NotFoundError:
    pass

print(f"openai {openai.__version__}: chat, chat stream, completions, completions stream, errors: ok")
