"""Drives a running wattserve with KServe's official Open Inference Protocol v2 clients, the asyncio
kserve.InferenceRESTClient and kserve.InferenceGRPCClient, and KServe's generated gRPC stub for
what those clients do not cover (metadata, trailing metadata). Prints one `ok: ...` line per check
passed; exits 1 with `FAIL: ...` on the first failure.

Checks:
- health through both clients, for both models: server live / ready (the REST client reads
  {"live": true} / {"ready": true} from the body), model ready, an unknown model not ready;
  server and model metadata (versions "" and "1"; "2" is NOT_FOUND) through the gRPC stub;
- embeddings of three texts equal to /v1/embeddings' (max abs difference <= 1e-6, shape (3, dim),
  float32): REST with JSON tensors, REST with a binary input and `binary_data_output`, gRPC with
  raw_input_contents and gRPC with contents.bytes_contents; the x-energy-* headers (REST, via the
  client's `response_headers`) and trailing metadata (gRPC stub, `ModelInfer.with_call`);
- every response's energy `parameters`: JSON numbers / strings over REST, string_param /
  int64_param over gRPC;
- generation, greedy, 16 tokens: `text_output` over REST and gRPC equal to /v1/completions' text
  (over gRPC the temperature is a string_param: kserve refuses Python floats there);
- errors: an INT32 `text` is 400 / INVALID_ARGUMENT naming the tensor; an unknown model is
  404 / NOT_FOUND; version 2 is NOT_FOUND over gRPC (the REST client cannot name a version).

Usage: kserve_check.py --http http://127.0.0.1:PORT --grpc 127.0.0.1:GPORT
                       --embed-model minilm --gen-model smollm2
triton_check.py does the same with tritonclient (which cannot be imported in this process).
"""
import asyncio
import importlib.metadata
import logging
import re
import sys

import grpc
import httpx
import numpy as np

from common import (
    MAX_TOKENS, PROMPT, TEXTS, Failure, as_text, check, check_embedding, check_energy_grpc,
    check_energy_headers, check_energy_rest, check_model_metadata, check_server_metadata,
    expected_metadata, parse_args, reference_completion, reference_embeddings, step,
)

args = parse_args(__doc__.splitlines()[0])
# Importing kserve parses sys.argv for its model server's flags (kserve/model_server.py, at module
# level, with abbreviations on: `--grpc` is "ambiguous", `--http` would be taken for --http_port).
sys.argv[1:] = []
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig  # noqa: E402
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb  # noqa: E402
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub  # noqa: E402

E, G = args.embed_model, args.gen_model
MODELS = (E, G)
KSERVE = f"kserve {importlib.metadata.version('kserve')}"
# The gRPC client logs every failed call with its traceback: the expected errors would flood stderr.
logging.getLogger("kserve.trace").setLevel(logging.CRITICAL)


def text_input(binary=False, datatype="BYTES"):
    """The `text` input: a JSON list (REST `data`, gRPC `contents`) or, with binary, numpy data sent
    as binary after the JSON (REST) or in raw_input_contents (gRPC)."""
    if datatype != "BYTES":
        return InferInput("text", [3], datatype, data=[1, 2, 3])
    if not binary:
        return InferInput("text", [len(TEXTS)], "BYTES", data=list(TEXTS))
    i = InferInput("text", [len(TEXTS)], "BYTES")
    i.set_data_from_numpy(np.array([t.encode("utf-8") for t in TEXTS], dtype=np.object_), binary_data=True)
    return i


def embed_request(model=None, **kw):
    binary = kw.pop("binary", False)
    return InferRequest(model_name=model or E, infer_inputs=[text_input(binary)], **kw)


def gen_request(parameters):
    return InferRequest(model_name=G, infer_inputs=[InferInput("text_input", [1], "BYTES", data=[PROMPT])],
                        parameters=parameters)


def embedding_of(resp, where):
    """The `embedding` output of an InferResponse as numpy, after checking its name and type."""
    check(resp.model_name == E, f"{where}: model_name {resp.model_name!r}")
    out = resp.get_output_by_name("embedding")
    check(out is not None, f"{where}: no output `embedding` in {[o.name for o in resp.outputs]}")
    check(out.datatype == "FP32", f"{where}: datatype {out.datatype}")
    return out.as_numpy()


def text_of(resp, where):
    check(resp.model_name == G, f"{where}: model_name {resp.model_name!r}")
    out = resp.get_output_by_name("text_output")
    check(out is not None, f"{where}: no output `text_output` in {[o.name for o in resp.outputs]}")
    arr = out.as_numpy()
    check(arr.shape == (1,), f"{where}: text_output shape {arr.shape}")
    return as_text(arr[0])


async def expect_http_error(coro, status, where):
    try:
        await coro
    except httpx.HTTPStatusError as e:
        check(e.response.status_code == status, f"{where}: status {e.response.status_code}, expected {status}: {e}")
        return e
    raise Failure(f"{where}: no error")


async def expect_rpc_error(coro, code, where):
    try:
        await coro
    except grpc.RpcError as e:  # grpc.aio.AioRpcError
        check(e.code() == code, f"{where}: {e.code()}, expected {code}: {e.details()}")
        return e
    raise Failure(f"{where}: no error")


def names_text(message, where):
    check(re.search(r"\btext\b", message or ""), f"{where}: message does not name the tensor `text`: {message!r}")


async def main():
    base = args.http
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=120))
    client = InferenceGRPCClient(url=args.grpc, timeout=120)
    channel = grpc.aio.insecure_channel(args.grpc)
    stub = GRPCInferenceServiceStub(channel)

    with step(f"{KSERVE}: reference /v1/embeddings and /v1/completions") as s:
        ref = reference_embeddings(base, E)
        ref_text = reference_completion(base, G)
        expected = expected_metadata(args, ref.shape[1])
        s.detail = f"dim {ref.shape[1]}, completion {ref_text!r}"

    def check_text(got, where):
        check(got == ref_text, f"{where}: {got!r} != /v1/completions' {ref_text!r}")

    # ---- health and metadata

    with step("kserve REST: server live and ready, models ready, unknown model not ready"):
        # Unlike tritonclient, which looks at the status only, kserve reads the JSON body.
        for what, call, key in (("live", rest.is_server_live, "live"), ("ready", rest.is_server_ready, "ready")):
            try:
                got = await call(base)
            except ValueError as e:  # json.JSONDecodeError
                raise Failure(f"GET /v2/health/{what}: body is not JSON ({e}); kserve wants {{{key!r}: true}}")
            check(got is True, f"GET /v2/health/{what}: kserve read {got!r} from the body's {key!r}, want true")
        for m in MODELS:
            check(await rest.is_model_ready(base, m), f"is_model_ready({m!r}) is False")
        check(not await rest.is_model_ready(base, "no-such-model"), "is_model_ready('no-such-model') is True")

    with step("kserve gRPC: ServerLive, ServerReady, ModelReady"):
        check(await client.is_server_live(), "is_server_live() is False")
        check(await client.is_server_ready(), "is_server_ready() is False")
        for m in MODELS:
            check(await client.is_model_ready(m), f"is_model_ready({m!r}) is False")
        try:  # ready=false or NOT_FOUND: either will do
            check(not await client.is_model_ready("no-such-model"), "is_model_ready('no-such-model') is True")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.NOT_FOUND, f"is_model_ready('no-such-model'): {e.code()} {e.details()}")

    with step("kserve gRPC stub: ServerMetadata, ModelMetadata") as s:
        s.detail = "version " + check_server_metadata(await stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=60),
                                                      "ServerMetadata")
        for m in MODELS:
            for v in ("", "1"):
                md = await stub.ModelMetadata(pb.ModelMetadataRequest(name=m, version=v), timeout=60)
                check_model_metadata(md, m, expected, f"ModelMetadata {m} version {v!r}")
            await expect_rpc_error(stub.ModelMetadata(pb.ModelMetadataRequest(name=m, version="2"), timeout=60),
                                   grpc.StatusCode.NOT_FOUND, f"ModelMetadata {m} version 2")
        await expect_rpc_error(stub.ModelMetadata(pb.ModelMetadataRequest(name="no-such-model"), timeout=60),
                               grpc.StatusCode.NOT_FOUND, "ModelMetadata no-such-model")

    # ---- embeddings

    with step("kserve REST: embeddings, JSON tensors, x-energy-* headers") as s:
        headers = {}
        resp = await rest.infer(base, embed_request(), model_name=E, response_headers=headers)
        check("inference-header-content-length" not in headers, "JSON request answered with binary data")
        diff = check_embedding(embedding_of(resp, "response"), ref, "embedding")
        check_energy_rest(resp.parameters, "response")
        j = check_energy_headers(headers, E, "headers")
        s.detail = f"max diff {diff:.2g}, x-energy-joules {j:.3g}"

    with step("kserve REST: embeddings, binary input, binary_data_output") as s:
        headers = {}
        resp = await rest.infer(base, embed_request(binary=True, parameters={"binary_data_output": True}),
                                model_name=E, response_headers=headers)
        check("inference-header-content-length" in headers, "binary_data_output ignored: no Inference-Header-Content-Length")
        diff = check_embedding(embedding_of(resp, "response"), ref, "embedding")
        j = check_energy_rest(resp.parameters, "response")
        check_energy_headers(headers, E, "headers")
        s.detail = f"max diff {diff:.2g}, {j:.3g} J"

    for label, binary in (("raw_input_contents", True), ("contents.bytes_contents", False)):
        with step(f"kserve gRPC: embeddings, {label}") as s:
            resp = await client.infer(embed_request(binary=binary))
            diff = check_embedding(embedding_of(resp, "response"), ref, "embedding")
            j = check_energy_grpc(resp.parameters, "response")
            s.detail = f"max diff {diff:.2g}, {j:.3g} J"

    with step("kserve gRPC stub ModelInfer.with_call: trailing metadata x-energy-*") as s:
        with grpc.insecure_channel(args.grpc) as sync_channel:
            sync_stub = GRPCInferenceServiceStub(sync_channel)
            raw, call = sync_stub.ModelInfer.with_call(embed_request(binary=True).to_grpc(), timeout=120)
            j = check_energy_headers(dict(call.trailing_metadata() or ()), E, "trailing metadata")
        check_energy_grpc(raw.parameters, "response")
        s.detail = f"x-energy-joules {j:.3g}"

    # ---- generation

    with step("kserve REST: generation") as s:
        resp = await rest.infer(base, gen_request({"max_tokens": MAX_TOKENS, "temperature": 0.0}), model_name=G)
        check_text(text_of(resp, "response"), "text_output")
        s.detail = f"{check_energy_rest(resp.parameters, 'response'):.3g} J"

    with step("kserve gRPC: generation (temperature as string_param)") as s:
        # kserve's to_grpc_parameters takes str, bool and int only: a float raises InvalidInput.
        resp = await client.infer(gen_request({"max_tokens": MAX_TOKENS, "temperature": "0.0"}))
        check_text(text_of(resp, "response"), "text_output")
        s.detail = f"{check_energy_grpc(resp.parameters, 'response'):.3g} J"

    # ---- errors

    with step("kserve REST: errors (INT32 text 400, unknown model 404)") as s:
        bad = InferRequest(model_name=E, infer_inputs=[text_input(datatype="INT32")])
        e = await expect_http_error(rest.infer(base, bad, model_name=E), 400, "INT32 text")
        body = e.response.json()
        check(isinstance(body.get("error"), str), f"INT32 text: body {body}")
        names_text(body["error"], "INT32 text")
        # kserve puts the server's `error` into its message when the content-type is exactly application/json.
        check(body["error"] in str(e), f"INT32 text: the client's message lacks the server's error: {e}")
        await expect_http_error(rest.infer(base, embed_request("no-such-model"), model_name="no-such-model"),
                                404, "unknown model")
        s.detail = repr(body["error"])

    with step("kserve gRPC: errors (INT32 text INVALID_ARGUMENT, unknown model and version 2 NOT_FOUND)") as s:
        bad = InferRequest(model_name=E, infer_inputs=[text_input(datatype="INT32")])
        e = await expect_rpc_error(client.infer(bad), grpc.StatusCode.INVALID_ARGUMENT, "INT32 text")
        names_text(e.details(), "INT32 text")
        await expect_rpc_error(client.infer(embed_request("no-such-model")), grpc.StatusCode.NOT_FOUND, "unknown model")
        await expect_rpc_error(client.infer(embed_request(model_version="2")), grpc.StatusCode.NOT_FOUND, "version 2")
        s.detail = repr(e.details())

    await rest.close()
    await client.close()
    await channel.close()
    print(f"{KSERVE}: all checks passed")


asyncio.run(main())
