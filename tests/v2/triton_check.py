"""Drives a running wattserve with NVIDIA's official Triton clients, tritonclient.http and
tritonclient.grpc, over the Open Inference Protocol v2, and Triton's generate extension over plain
HTTP. Prints one `ok: ...` line per check passed; exits 1 with `FAIL: ...` on the first failure.

Checks:
- health and metadata through both clients, for both models: server live / ready, model ready
  (also as version 1), server metadata, model metadata (also as version 1) with the tensors'
  names, datatypes and shapes;
- embeddings of three texts equal to /v1/embeddings' (max abs difference <= 1e-6, shape (3, dim),
  float32) through tritonclient.http in binary mode (binary input, `binary_data` output), JSON mode
  (JSON input, JSON output), the client's default (`binary_data_output` request parameter) with a
  [3, 1] input on /versions/1/infer, a request body from `generate_request_body` posted as is (for
  the x-energy-* headers, which the client does not expose), tritonclient.grpc, and the generated
  gRPC stub's `ModelInfer.with_call` (for the trailing metadata);
- every response's energy `parameters`: JSON numbers / strings over REST, string_param /
  int64_param over gRPC;
- generation, greedy, 16 tokens: `text_output` through tritonclient.http (binary and JSON) and
  tritonclient.grpc (whose float parameters travel as double_param) equal to /v1/completions'
  text; POST /v2/models/{m}/generate with nested and with top-level parameters equal too;
  generate_stream's pieces concatenated equal too, energy in the last event;
- errors: an INT32 `text` is 400 / INVALID_ARGUMENT naming the tensor; an unknown model and
  version 2 are 404 / NOT_FOUND.

Usage: triton_check.py --http http://127.0.0.1:PORT --grpc 127.0.0.1:GPORT
                       --embed-model minilm --gen-model smollm2
kserve_check.py does the same with KServe's clients (which cannot be imported in this process).
"""
import importlib.metadata
import re

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from common import (
    MAX_TOKENS, PROMPT, TEXTS, Failure, as_text, check, check_embedding, check_energy_grpc,
    check_energy_headers, check_energy_rest, check_model_metadata, check_server_metadata,
    expected_metadata, http_request, parse_args, post_json, reference_completion,
    reference_embeddings, sse_events, step,
)

args = parse_args(__doc__.splitlines()[0])
E, G = args.embed_model, args.gen_model
MODELS = (E, G)
# Greedy. Python floats: JSON numbers over REST, InferParameter.double_param over gRPC.
GEN_PARAMS = {"max_tokens": MAX_TOKENS, "temperature": 0.0}
HTTP = httpclient.InferenceServerClient(url=args.http.split("://", 1)[1], network_timeout=120.0)
GRPC = grpcclient.InferenceServerClient(url=args.grpc)
TRITON = f"tritonclient {importlib.metadata.version('tritonclient')}"


def texts_array(texts, shape):
    return np.array([t.encode("utf-8") for t in texts], dtype=np.object_).reshape(shape)


def http_text_input(binary, shape=(len(TEXTS),)):
    i = httpclient.InferInput("text", list(shape), "BYTES")
    return i.set_data_from_numpy(texts_array(TEXTS, shape), binary_data=binary)


def grpc_text_input():
    i = grpcclient.InferInput("text", [len(TEXTS)], "BYTES")
    return i.set_data_from_numpy(texts_array(TEXTS, (len(TEXTS),)))


def expect_error(call, status, where):
    """`call()` must raise InferenceServerException with this status ("404", "StatusCode.NOT_FOUND")."""
    try:
        call()
    except InferenceServerException as e:
        check(e.status() == status, f"{where}: status {e.status()!r}, expected {status!r}: {e.message()}")
        return e
    raise Failure(f"{where}: no error")


def check_rest_result(result, model, where):
    """A tritonclient.http InferResult: model name and version, energy parameters."""
    r = result.get_response()
    check(r.get("model_name") == model, f"{where}: model_name {r.get('model_name')!r}")
    check(r.get("model_version", "1") == "1", f"{where}: model_version {r.get('model_version')!r}")
    return check_energy_rest(r.get("parameters"), where)


def is_binary(result, output):
    """Whether an output of a tritonclient.http InferResult came as binary data after the JSON."""
    params = result.get_output(output).get("parameters") or {}
    return "binary_data_size" in params


with step(f"{TRITON}: reference /v1/embeddings and /v1/completions") as s:
    REF = reference_embeddings(args.http, E)
    DIM = REF.shape[1]
    REF_TEXT = reference_completion(args.http, G)
    EXPECTED = expected_metadata(args, DIM)
    s.detail = f"dim {DIM}, completion {REF_TEXT!r}"

# ---- health and metadata

with step("tritonclient.http: server live and ready, models ready, unknown model not ready"):
    check(HTTP.is_server_live(), "is_server_live() is False")
    check(HTTP.is_server_ready(), "is_server_ready() is False")
    for m in MODELS:
        check(HTTP.is_model_ready(m), f"is_model_ready({m!r}) is False")
        check(HTTP.is_model_ready(m, "1"), f"is_model_ready({m!r}, '1') (GET /v2/models/{m}/versions/1/ready) is False")
    check(not HTTP.is_model_ready("no-such-model"), "is_model_ready('no-such-model') is True")

with step("tritonclient.http: server and model metadata") as s:
    s.detail = "version " + check_server_metadata(HTTP.get_server_metadata(), "GET /v2")
    for m in MODELS:
        check_model_metadata(HTTP.get_model_metadata(m), m, EXPECTED, f"GET /v2/models/{m}")
        check_model_metadata(HTTP.get_model_metadata(m, "1"), m, EXPECTED, f"GET /v2/models/{m}/versions/1")
        expect_error(lambda: HTTP.get_model_metadata(m, "2"), "404", f"GET /v2/models/{m}/versions/2")
    expect_error(lambda: HTTP.get_model_metadata("no-such-model"), "404", "GET /v2/models/no-such-model")

with step("tritonclient.grpc: ServerLive, ServerReady, ModelReady"):
    check(GRPC.is_server_live(), "is_server_live() is False")
    check(GRPC.is_server_ready(), "is_server_ready() is False")
    for m in MODELS:
        check(GRPC.is_model_ready(m), f"is_model_ready({m!r}) is False")
        check(GRPC.is_model_ready(m, "1"), f"is_model_ready({m!r}, '1') is False")
    try:  # Triton answers NOT_FOUND here, KServe ready=false: either will do
        check(not GRPC.is_model_ready("no-such-model"), "is_model_ready('no-such-model') is True")
    except InferenceServerException as e:
        check(e.status() == "StatusCode.NOT_FOUND", f"is_model_ready('no-such-model'): {e.status()} {e.message()}")

with step("tritonclient.grpc: ServerMetadata, ModelMetadata"):
    check_server_metadata(GRPC.get_server_metadata(), "ServerMetadata")
    for m in MODELS:
        check_model_metadata(GRPC.get_model_metadata(m), m, EXPECTED, f"ModelMetadata {m}")
        check_model_metadata(GRPC.get_model_metadata(m, "1"), m, EXPECTED, f"ModelMetadata {m} version 1")
        expect_error(lambda: GRPC.get_model_metadata(m, "2"), "StatusCode.NOT_FOUND", f"ModelMetadata {m} version 2")
    expect_error(lambda: GRPC.get_model_metadata("no-such-model"), "StatusCode.NOT_FOUND", "ModelMetadata no-such-model")

# ---- embeddings

with step("tritonclient.http: embeddings, binary input and binary output") as s:
    r = HTTP.infer(E, [http_text_input(True)], outputs=[httpclient.InferRequestedOutput("embedding", binary_data=True)])
    check(is_binary(r, "embedding"), "output `embedding` not sent as binary data")
    size = r.get_output("embedding")["parameters"]["binary_data_size"]
    check(size == REF.size * 4, f"binary_data_size {size}, expected {REF.size * 4}")
    diff = check_embedding(r.as_numpy("embedding"), REF, "embedding")
    j = check_rest_result(r, E, "response")
    s.detail = f"max diff {diff:.2g}, {j:.3g} J"

with step("tritonclient.http: embeddings, JSON input and JSON output") as s:
    r = HTTP.infer(E, [http_text_input(False)], outputs=[httpclient.InferRequestedOutput("embedding", binary_data=False)])
    out = r.get_output("embedding")
    check(not is_binary(r, "embedding") and "data" in out, "output `embedding` not sent as JSON `data`")
    check(out["datatype"] == "FP32" and out["shape"] == list(REF.shape), f"output {out['datatype']} {out['shape']}")
    diff = check_embedding(r.as_numpy("embedding"), REF, "embedding")
    j = check_rest_result(r, E, "response")
    s.detail = f"max diff {diff:.2g}, {j:.3g} J"

with step("tritonclient.http: embeddings, [3, 1] input, binary_data_output, /versions/1/infer") as s:
    # No `outputs`: the client asks for every output in binary with parameters.binary_data_output.
    r = HTTP.infer(E, [http_text_input(False, (len(TEXTS), 1))], model_version="1")
    check(is_binary(r, "embedding"), "binary_data_output ignored: `embedding` not binary")
    diff = check_embedding(r.as_numpy("embedding"), REF, "embedding")
    j = check_rest_result(r, E, "response")
    s.detail = f"max diff {diff:.2g}, {j:.3g} J"

with step("tritonclient.http: generate_request_body posted as is, x-energy-* headers") as s:
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        [http_text_input(True)], outputs=[httpclient.InferRequestedOutput("embedding", binary_data=True)]
    )
    check(json_size is not None, "generate_request_body made no binary part")
    # Like the client: Inference-Header-Content-Length, and no Content-Type.
    status, headers, content = http_request(
        args.http, "POST", f"/v2/models/{E}/infer", body, {"Inference-Header-Content-Length": str(json_size)}
    )
    check(status == 200, f"status {status}: {content[:300]!r}")
    header_length = headers.get("Inference-Header-Content-Length")
    check(header_length is not None, "binary response without Inference-Header-Content-Length")
    r = httpclient.InferenceServerClient.parse_response_body(content, header_length=int(header_length))
    check_embedding(r.as_numpy("embedding"), REF, "embedding")
    j = check_energy_headers(headers, E, "headers")
    check_rest_result(r, E, "response")
    s.detail = f"x-energy-joules {j:.3g}, x-energy-source {headers.get('x-energy-source')}"

with step("tritonclient.grpc: embeddings (raw_input_contents / raw_output_contents)") as s:
    r = GRPC.infer(E, [grpc_text_input()], outputs=[grpcclient.InferRequestedOutput("embedding")])
    resp = r.get_response()
    check(resp.model_name == E, f"model_name {resp.model_name!r}")
    check(len(resp.raw_output_contents) == 1, f"{len(resp.raw_output_contents)} raw_output_contents")
    diff = check_embedding(r.as_numpy("embedding"), REF, "embedding")
    j = check_energy_grpc(resp.parameters, "response")
    s.detail = f"max diff {diff:.2g}, {j:.3g} J"

with step("gRPC stub ModelInfer.with_call: trailing metadata x-energy-*") as s:
    channel = grpc.insecure_channel(args.grpc)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(
        model_name=E,
        inputs=[service_pb2.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[len(TEXTS)])],
        raw_input_contents=[serialize_byte_tensor(texts_array(TEXTS, (len(TEXTS),))).item()],
    )
    resp, call = stub.ModelInfer.with_call(request, timeout=120)
    trailing = dict(call.trailing_metadata() or ())
    j = check_energy_headers(trailing, E, "trailing metadata")
    out = resp.outputs[0]
    got = np.frombuffer(resp.raw_output_contents[0], dtype=np.float32).reshape(list(out.shape))
    check_embedding(got, REF, "embedding")
    check_energy_grpc(resp.parameters, "response")
    channel.close()
    s.detail = f"x-energy-joules {j:.3g}"

# ---- generation


def gen_input(module, binary=None):
    i = module.InferInput("text_input", [1], "BYTES")
    arr = np.array([PROMPT.encode("utf-8")], dtype=np.object_)
    return i.set_data_from_numpy(arr) if binary is None else i.set_data_from_numpy(arr, binary_data=binary)


def check_text(got, where):
    check(got == REF_TEXT, f"{where}: {got!r} != /v1/completions' {REF_TEXT!r}")


with step("tritonclient.http: generation, binary") as s:
    r = HTTP.infer(G, [gen_input(httpclient, True)], parameters=GEN_PARAMS)
    out = r.as_numpy("text_output")
    check(out is not None and out.shape == (1,), f"text_output {out!r}")
    check_text(as_text(out[0]), "text_output")
    s.detail = f"{check_rest_result(r, G, 'response'):.3g} J"

with step("tritonclient.http: generation, JSON") as s:
    r = HTTP.infer(G, [gen_input(httpclient, False)], parameters=GEN_PARAMS,
                   outputs=[httpclient.InferRequestedOutput("text_output", binary_data=False)])
    check(not is_binary(r, "text_output"), "text_output not sent as JSON")
    check_text(as_text(r.as_numpy("text_output")[0]), "text_output")
    s.detail = f"{check_rest_result(r, G, 'response'):.3g} J"

with step("tritonclient.grpc: generation (temperature as double_param)") as s:
    r = GRPC.infer(G, [gen_input(grpcclient)], parameters=GEN_PARAMS)
    out = r.as_numpy("text_output")
    check(out is not None and out.shape == (1,), f"text_output {out!r}")
    check_text(as_text(out[0]), "text_output")
    s.detail = f"{check_energy_grpc(r.get_response().parameters, 'response'):.3g} J"

for label, body in (
    ("nested parameters", {"text_input": PROMPT, "parameters": {"max_tokens": MAX_TOKENS, "temperature": 0}}),
    ("top-level parameters", {"text_input": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}),
):
    with step(f"POST /v2/models/{G}/generate, {label}") as s:
        status, headers, r = post_json(args.http, f"/v2/models/{G}/generate", body)
        check(status == 200, f"status {status}: {r}")
        check(r.get("model_name") == G, f"model_name {r.get('model_name')!r}")
        check(r.get("model_version", "1") == "1", f"model_version {r.get('model_version')!r}")
        check_text(r.get("text_output"), "text_output")
        check_energy_rest(r.get("parameters"), "parameters")
        s.detail = f"x-energy-joules {check_energy_headers(headers, G, 'headers'):.3g}"

with step(f"POST /v2/models/{G}/generate_stream") as s:
    _, events = sse_events(args.http, f"/v2/models/{G}/generate_stream",
                           {"text_input": PROMPT, "parameters": {"max_tokens": MAX_TOKENS, "temperature": 0}})
    check(len(events) >= 2, f"{len(events)} events")
    for e in events:
        check(e.get("model_name") == G, f"event model_name {e.get('model_name')!r}")
        check(isinstance(e.get("text_output"), str), f"event without text_output: {e}")
    check_text("".join(e["text_output"] for e in events), "concatenated text_output")
    j = check_energy_rest(events[-1].get("parameters"), "last event parameters")
    s.detail = f"{len(events)} events, {j:.3g} J"

# ---- errors


def int32_text(module):
    i = module.InferInput("text", [3], "INT32")
    return i.set_data_from_numpy(np.array([1, 2, 3], dtype=np.int32))


def names_text(e, where):
    check(re.search(r"\btext\b", e.message()), f"{where}: message does not name the tensor `text`: {e.message()!r}")


with step("tritonclient.http: errors (INT32 text 400, unknown model 404, version 2 404)") as s:
    e = expect_error(lambda: HTTP.infer(E, [int32_text(httpclient)]), "400", "INT32 text")
    names_text(e, "INT32 text")
    expect_error(lambda: HTTP.infer("no-such-model", [http_text_input(True)]), "404", "unknown model")
    expect_error(lambda: HTTP.infer(E, [http_text_input(True)], model_version="2"), "404", "version 2")
    s.detail = repr(e.message())

with step("tritonclient.grpc: errors (INT32 text INVALID_ARGUMENT, unknown model and version 2 NOT_FOUND)") as s:
    e = expect_error(lambda: GRPC.infer(E, [int32_text(grpcclient)]), "StatusCode.INVALID_ARGUMENT", "INT32 text")
    names_text(e, "INT32 text")
    expect_error(lambda: GRPC.infer("no-such-model", [grpc_text_input()]), "StatusCode.NOT_FOUND", "unknown model")
    expect_error(lambda: GRPC.infer(E, [grpc_text_input()], model_version="2"), "StatusCode.NOT_FOUND", "version 2")
    s.detail = repr(e.message())

HTTP.close()
GRPC.close()
print(f"{TRITON}: all checks passed")
