"""Drives a running wattserve with the official `openai` Python client: chat and completions,
streamed and not, usage (with wattserve's energy extension), logprobs and echo, and errors. Exits non-zero with a
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

# Logprobs, chat: one entry per generated token with the asked alternatives, the chosen token's
# logprob the largest at temperature 0, the bytes spelling the text; streamed the same.
r = client.chat.completions.create(
    model=model, messages=messages, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
)
content = r.choices[0].logprobs.content
check(len(content) == 8, f"chat logprobs: {len(content)} entries")
check(all(len(t.top_logprobs) == 3 for t in content), "chat top_logprobs")
check(all(t.logprob == t.top_logprobs[0].logprob <= 0 for t in content), "greedy token is the top one")
check(b"".join(bytes(t.bytes) for t in content).decode() == r.choices[0].message.content, "chat bytes")
streamed = []
for chunk in client.chat.completions.create(
    model=model, messages=messages, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3,
    stream=True,
):
    for c in chunk.choices:
        if c.logprobs and c.logprobs.content:
            streamed.extend(c.logprobs.content)
check([(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content],
      "streamed chat logprobs differ")

# Logprobs, completions: echo with max_tokens=0 scores the prompt (what lm-evaluation-harness
# sends); with generation, the prompt's tokens come first.
prompt = "The capital of France is Paris."
r = client.completions.create(model=model, prompt=prompt, max_tokens=0, echo=True, logprobs=1)
lp = r.choices[0].logprobs
check(r.choices[0].text == prompt, f"echo text {r.choices[0].text!r}")
check(r.usage.completion_tokens == 0, "scoring generated tokens")
check(lp.token_logprobs[0] is None and all(x < 0 for x in lp.token_logprobs[1:]), "prompt logprobs")
check("".join(lp.tokens) == prompt, f"echo tokens {lp.tokens}")
check(lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0, "text_offset")
r = client.completions.create(model=model, prompt=prompt, max_tokens=4, echo=True, logprobs=2, temperature=0)
lp2 = r.choices[0].logprobs
check(lp2.token_logprobs[: len(lp.tokens)] == lp.token_logprobs, "echo logprobs with generation")
check(len(lp2.tokens) == len(lp.tokens) + 4, "four generated tokens after the prompt")
check(all(len(t) in (2, 3) for t in lp2.top_logprobs[1:]), "logprobs=2 alternatives (+ chosen)")
try:
    client.completions.create(model=model, prompt=prompt, max_tokens=1, logprobs=6)
    check(False, "logprobs=6 accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400 and "logprobs" in str(e), f"logprobs=6 error: {e}")
try:
    client.chat.completions.create(model=model, messages=messages, logprobs=True, top_logprobs=21)
    check(False, "top_logprobs=21 accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400 and "top_logprobs" in str(e), f"top_logprobs=21 error: {e}")

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

print(f"openai {openai.__version__}: chat, chat stream, completions, completions stream, logprobs, echo, errors: ok")
