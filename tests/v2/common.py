"""Shared by triton_check.py and kserve_check.py: arguments, the check runner, plain-HTTP helpers
(standard library only), the references from wattserve's OpenAI endpoints, and the checks of the
energy parameters and headers every successful v2 response carries.

Imports neither tritonclient nor kserve: the two packages register the same protobuf names
("inference.ServerLiveRequest", ...) in protobuf's default pool, so no process can import both.
"""
import argparse
import contextlib
import http.client
import json
import math
import sys
import traceback
import urllib.parse

import numpy as np

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "wattserve meters every request.",
    "A third sentence, somewhat longer, about the energy each inference costs.",
]
PROMPT = "The capital of France is"
MAX_TOKENS = 16
TOLERANCE = 1e-6  # max abs difference between a v2 embedding and /v1/embeddings'
ENERGY_HEADERS = (
    "x-energy-joules", "x-energy-source", "x-co2e-grams", "x-cost-usd",
    "x-model", "x-precision", "x-batch-size",
)


def parse_args(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--http", required=True, help="REST base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--grpc", required=True, help="gRPC address, e.g. 127.0.0.1:8081")
    p.add_argument("--embed-model", default="minilm")
    p.add_argument("--gen-model", default="smollm2")
    a = p.parse_args()
    a.http = a.http.rstrip("/")
    return a


# ---- the check runner: one "ok: ..." line per check passed, "FAIL: ..." and exit 1 on the first failure


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def die(msg):
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


class _Step:
    detail = ""


@contextlib.contextmanager
def step(name):
    """`with step("what is checked") as s: ...` prints `ok: what is checked` (and s.detail) when the
    block finishes, or `FAIL: what is checked: why` and exits 1 when it raises."""
    s = _Step()
    try:
        yield s
    except Failure as e:
        die(f"{name}: {e}")
    except Exception as e:  # a client error where none was expected, a refused connection, ...
        traceback.print_exc()
        die(f"{name}: unexpected {type(e).__name__}: {e}")
    print(f"ok: {name}" + (f" ({s.detail})" if s.detail else ""), flush=True)


# ---- plain HTTP (http.client, so that no Content-Type is added behind our back)


def http_request(base, method, path, body=None, headers=None):
    """Returns (status, headers, body bytes)."""
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    try:
        conn.request(method, u.path + path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


def post_json(base, path, obj):
    """POSTs JSON; returns (status, headers, decoded JSON body)."""
    status, headers, body = http_request(
        base, "POST", path, json.dumps(obj).encode(), {"Content-Type": "application/json"}
    )
    try:
        return status, headers, json.loads(body)
    except ValueError:
        raise Failure(f"POST {path}: {status}, body is not JSON: {body[:200]!r}")


def sse_events(base, path, obj):
    """POSTs JSON and reads a `text/event-stream` answer; returns (headers, [each `data:` as JSON])."""
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    try:
        conn.request("POST", u.path + path, body=json.dumps(obj).encode(),
                     headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        r = conn.getresponse()
        if r.status != 200:
            raise Failure(f"POST {path}: status {r.status}: {r.read()[:300]!r}")
        ctype = r.headers.get("content-type", "")
        check(ctype.startswith("text/event-stream"), f"POST {path}: content-type {ctype!r}")
        events = []
        for raw in r:  # lines; http.client undoes the chunked encoding
            line = raw.decode("utf-8").rstrip("\r\n")
            if line.startswith("data:"):
                data = line[5:].strip()
                try:
                    events.append(json.loads(data))
                except ValueError:
                    raise Failure(f"POST {path}: event data is not JSON: {data!r}")
        return r.headers, events
    finally:
        conn.close()


# ---- references from wattserve's OpenAI endpoints


def reference_embeddings(base, model):
    status, _, body = post_json(base, "/v1/embeddings", {"model": model, "input": TEXTS})
    check(status == 200, f"/v1/embeddings: {status} {body}")
    data = sorted(body["data"], key=lambda d: d["index"])
    ref = np.array([d["embedding"] for d in data], dtype=np.float32)
    check(ref.shape[0] == len(TEXTS), f"/v1/embeddings: {ref.shape[0]} embeddings")
    return ref


def reference_completion(base, model):
    status, _, body = post_json(base, "/v1/completions", {
        "model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0,
    })
    check(status == 200, f"/v1/completions: {status} {body}")
    text = body["choices"][0]["text"]
    check(text, "/v1/completions: empty text")
    return text


def check_embedding(got, ref, where):
    """`got` a numpy array from a client: shape, dtype and values as the reference's."""
    check(isinstance(got, np.ndarray), f"{where}: output is {type(got).__name__}, not an ndarray")
    check(got.shape == ref.shape, f"{where}: shape {got.shape}, expected {ref.shape}")
    check(got.dtype == np.float32, f"{where}: dtype {got.dtype}, expected float32")
    diff = float(np.max(np.abs(got - ref)))
    check(diff <= TOLERANCE, f"{where}: max abs difference to /v1/embeddings {diff:.3g} > {TOLERANCE}")
    return diff


def as_text(value):
    """One element of a BYTES tensor as str (clients give bytes or str)."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ---- energy: response parameters, HTTP headers, gRPC trailing metadata


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_energy_rest(params, where):
    """`parameters` of a REST response, as JSON: numbers and strings. Returns the joules."""
    check(isinstance(params, dict), f"{where}: response parameters {params!r}")
    j = params.get("energy_joules")
    check(_number(j) and j > 0, f"{where}: parameters.energy_joules {j!r} (want a number > 0)")
    for k in ("co2e_grams", "cost_usd"):
        v = params.get(k)
        check(_number(v) and v >= 0, f"{where}: parameters.{k} {v!r} (want a number >= 0)")
    b = params.get("batch_size")
    check(isinstance(b, int) and not isinstance(b, bool) and b >= 1,
          f"{where}: parameters.batch_size {b!r} (want an integer >= 1)")
    for k in ("energy_source", "precision"):
        v = params.get(k)
        check(isinstance(v, str) and v, f"{where}: parameters.{k} {v!r} (want a string)")
    return j


def grpc_params(param_map):
    """A protobuf map<string, InferParameter> (tritonclient's or kserve's) as {name: (kind, value)},
    kind being the field set: "string_param", "int64_param", ..."""
    out = {}
    for name, p in param_map.items():
        kind = p.WhichOneof("parameter_choice")
        out[name] = (kind, getattr(p, kind) if kind else None)
    return out


def check_energy_grpc(param_map, where):
    """`parameters` of a ModelInferResponse: decimal numbers as string_param (KServe's proto has no
    double), batch_size as int64_param, the rest as string_param. Returns the joules."""
    p = grpc_params(param_map)

    def decimal(name, minimum_exclusive):
        kind, v = p.get(name, (None, None))
        check(kind == "string_param", f"{where}: parameters[{name!r}] is {kind} {v!r}, want string_param")
        try:
            x = float(v)
        except ValueError:
            raise Failure(f"{where}: parameters[{name!r}] = {v!r} is not a decimal number")
        check(math.isfinite(x) and (x > 0 if minimum_exclusive else x >= 0),
              f"{where}: parameters[{name!r}] = {v!r} out of range")
        return x

    j = decimal("energy_joules", True)
    decimal("co2e_grams", False)
    decimal("cost_usd", False)
    kind, b = p.get("batch_size", (None, None))
    check(kind == "int64_param" and b >= 1, f"{where}: parameters['batch_size'] is {kind} {b!r}, want int64_param >= 1")
    for name in ("energy_source", "precision"):
        kind, v = p.get(name, (None, None))
        check(kind == "string_param" and v, f"{where}: parameters[{name!r}] is {kind} {v!r}, want a string_param")
    return j


def check_energy_headers(headers, model, where):
    """The x-energy-* headers of a REST response, or the trailing metadata of a gRPC one: any
    mapping with lower-case or case-insensitive keys. Returns the joules."""
    get = headers.get
    missing = [h for h in ENERGY_HEADERS if get(h) is None]
    check(not missing, f"{where}: missing {', '.join(missing)}")
    try:
        j = float(get("x-energy-joules"))
        float(get("x-co2e-grams"))
        float(get("x-cost-usd"))
        b = int(get("x-batch-size"))
    except ValueError as e:
        raise Failure(f"{where}: {e}")
    check(j > 0, f"{where}: x-energy-joules {j}")
    check(b >= 1, f"{where}: x-batch-size {b}")
    check(get("x-model") == model, f"{where}: x-model {get('x-model')!r}, expected {model!r}")
    check(get("x-energy-source"), f"{where}: empty x-energy-source")
    return j


# ---- metadata


def expected_metadata(args, dim):
    """{model: (inputs, outputs)} as the server's model metadata lists them."""
    return {
        args.embed_model: (
            [
                {"name": "text", "datatype": "BYTES", "shape": [-1]},
                {"name": "truncate", "datatype": "BOOL", "shape": [1]},
            ],
            [{"name": "embedding", "datatype": "FP32", "shape": [-1, dim]}],
        ),
        args.gen_model: (
            [{"name": "text_input", "datatype": "BYTES", "shape": [1]}],
            [{"name": "text_output", "datatype": "BYTES", "shape": [1]}],
        ),
    }


def tensors(ts):
    """Tensor metadata (dicts from REST or TensorMetadata messages from gRPC) as plain dicts."""
    if ts and isinstance(ts[0], dict):
        return [{"name": t["name"], "datatype": t["datatype"], "shape": [int(d) for d in t["shape"]]} for t in ts]
    return [{"name": t.name, "datatype": t.datatype, "shape": [int(d) for d in t.shape]} for t in ts]


def check_model_metadata(md, model, expected, where):
    """`md`: REST metadata as a dict, or a ModelMetadataResponse."""
    if isinstance(md, dict):
        name, versions, platform = md.get("name"), md.get("versions"), md.get("platform")
        inputs, outputs = md.get("inputs", []), md.get("outputs", [])
    else:
        name, versions, platform = md.name, list(md.versions), md.platform
        inputs, outputs = md.inputs, md.outputs
    check(name == model, f"{where}: name {name!r}")
    check(versions == ["1"], f"{where}: versions {versions!r}, expected ['1']")
    check(platform == "wattserve", f"{where}: platform {platform!r}")
    want_in, want_out = expected[model]
    check(tensors(inputs) == want_in, f"{where}: inputs {tensors(inputs)}, expected {want_in}")
    check(tensors(outputs) == want_out, f"{where}: outputs {tensors(outputs)}, expected {want_out}")


def check_server_metadata(md, where):
    """`md`: REST metadata as a dict, or a ServerMetadataResponse."""
    if isinstance(md, dict):
        name, version, ext = md.get("name"), md.get("version"), md.get("extensions")
    else:
        name, version, ext = md.name, md.version, list(md.extensions)
    check(name == "wattserve", f"{where}: name {name!r}")
    check(isinstance(version, str) and version, f"{where}: version {version!r}")
    check(isinstance(ext, list) and all(isinstance(e, str) for e in ext), f"{where}: extensions {ext!r}")
    return version
