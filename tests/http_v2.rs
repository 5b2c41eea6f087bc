//! The Open Inference Protocol over real HTTP and gRPC on 127.0.0.1: malformed binary framing and
//! wrong datatypes or shapes are 400s with `{"error": "..."}` naming what is wrong (never a
//! panic: the server answers the next request); embeddings are identical across the OpenAI,
//! V2 JSON, V2 binary and gRPC paths; the energy of every V2 and gRPC response adds up to the
//! same counters as the OpenAI path; API keys apply to both. A test binary of its own: it
//! reads the process-wide metrics.

mod common;

use std::io::Write;

use serde_json::{json, Value};
use wattserve::api::grpc::pb;
use wattserve::api::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use wattserve::api::grpc::pb::infer_parameter::ParameterChoice;
use wattserve::api::v2::tensor::join_byte_strings;
use wattserve::config::SourceChoice;

use common::{metric_sum, sha256_hex, TestServer};

const TEXTS: [&str; 3] = [
    "The quick brown fox jumps over the lazy dog.",
    "wattserve meters every request.",
    "Energy per request, in joules.",
];

/// A V2 binary body: the JSON header, then `binary` (the header's length in the returned value).
fn binary_body(header: &Value, binary: &[u8]) -> (Vec<u8>, usize) {
    let mut body = serde_json::to_vec(header).unwrap();
    let len = body.len();
    body.extend_from_slice(binary);
    (body, len)
}

/// BYTES elements in raw form.
fn raw_strings(items: &[&str]) -> Vec<u8> {
    join_byte_strings(items.iter().map(|s| s.as_bytes()))
}

/// POSTs raw bytes (with an optional `Inference-Header-Content-Length` and content type):
/// status, headers, body.
async fn post_raw(
    url: &str,
    body: Vec<u8>,
    header_len: Option<&str>,
    content_type: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = reqwest::Client::new().post(url).body(body);
    if let Some(n) = header_len {
        req = req.header("inference-header-content-length", n);
    }
    if let Some(t) = content_type {
        req = req.header("content-type", t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

/// Asserts a V2 error: `status` and `{"error": "..."}` containing `needle`.
fn assert_v2_error(got: (u16, Vec<u8>), status: u16, needle: &str) {
    let (code, body) = got;
    let v: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&body)));
    assert_eq!(code, status, "{v}");
    let message = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not a V2 error: {v}"));
    assert!(message.contains(needle), "`{message}` lacks `{needle}`");
}

fn text_input(shape: Value, extra: Value) -> Value {
    let mut input = json!({"name": "text", "datatype": "BYTES", "shape": shape});
    input
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({ "inputs": [input] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_binary_framing_is_a_400_never_a_panic() {
    if !common::minilm_available() {
        return;
    }
    let s = TestServer::start(|_| {}).await;
    let url = s.url("/v2/models/minilm/infer");
    let ok_raw = raw_strings(&["hello"]);
    let header = text_input(
        json!([1]),
        json!({"parameters": {"binary_data_size": ok_raw.len()}}),
    );

    // The header says more bytes than the body has.
    let (body, len) = binary_body(&header, &ok_raw);
    let too_long = (body.len() + 1).to_string();
    let (c, _, b) = post_raw(&url, body.clone(), Some(&too_long), None).await;
    assert_v2_error((c, b), 400, "but the body has only");
    // Not a number.
    let (c, _, b) = post_raw(&url, body.clone(), Some("12x"), None).await;
    assert_v2_error((c, b), 400, "must be a byte count");
    // A header length that cuts the JSON short.
    let (c, _, b) = post_raw(&url, body.clone(), Some(&(len - 3).to_string()), None).await;
    assert_v2_error((c, b), 400, "not valid");

    // binary_data_size past the end of the body.
    let big = text_input(
        json!([1]),
        json!({"parameters": {"binary_data_size": 1000}}),
    );
    let (body, len) = binary_body(&big, &ok_raw);
    let (c, _, b) = post_raw(&url, body, Some(&len.to_string()), None).await;
    assert_v2_error((c, b), 400, "declares 1000 bytes of binary data");

    // A BYTES element whose length runs past the end of its tensor.
    let mut past = ok_raw.clone();
    past[0] = 200;
    let (body, len) = binary_body(&header, &past);
    let (c, _, b) = post_raw(&url, body, Some(&len.to_string()), None).await;
    assert_v2_error((c, b), 400, "declares 200 bytes but only 5 remain");

    // A length prefix cut short: two elements declared, one and a half sent.
    let two = text_input(
        json!([2]),
        json!({"parameters": {"binary_data_size": ok_raw.len() + 2}}),
    );
    let mut cut = ok_raw.clone();
    cut.extend_from_slice(&[1, 0]);
    let (body, len) = binary_body(&two, &cut);
    let (c, _, b) = post_raw(&url, body, Some(&len.to_string()), None).await;
    assert_v2_error((c, b), 400, "ends inside the 4-byte length of element 1");

    // Bytes after the last input's.
    let mut extra = ok_raw.clone();
    extra.extend_from_slice(b"zz");
    let (body, len) = binary_body(&header, &extra);
    let (c, _, b) = post_raw(&url, body, Some(&len.to_string()), None).await;
    assert_v2_error((c, b), 400, "2 bytes of binary data after the last input");

    // The same request, well formed, is served (the server is alive and answers in binary).
    let mut asked = header.clone();
    asked["outputs"] = json!([{"name": "embedding", "parameters": {"binary_data": true}}]);
    let (body, len) = binary_body(&asked, &ok_raw);
    let (c, h, b) = post_raw(&url, body, Some(&len.to_string()), None).await;
    assert_eq!(c, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(h["content-type"], "application/octet-stream");
    let json_len: usize = h["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let meta: Value = serde_json::from_slice(&b[..json_len]).unwrap();
    assert_eq!(meta["outputs"][0]["shape"], json!([1, 384]));
    assert_eq!(
        meta["outputs"][0]["parameters"]["binary_data_size"],
        384 * 4
    );
    assert_eq!(b.len() - json_len, 384 * 4);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datatypes_shapes_and_names_are_checked() {
    if !common::minilm_available() {
        return;
    }
    let s = TestServer::start(|_| {}).await;
    let url = s.url("/v2/models/minilm/infer");
    let post = |body: Value| {
        let url = url.clone();
        async move {
            let (c, _, b) = post_raw(&url, serde_json::to_vec(&body).unwrap(), None, None).await;
            (c, b)
        }
    };
    let cases = [
        (
            json!({"inputs": [{"name": "text", "datatype": "INT32", "shape": [1], "data": [1]}]}),
            "Input `text` must have datatype BYTES, got `INT32`",
        ),
        (
            json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]}]}),
            "must have shape [-1] or [-1, 1]",
        ),
        (
            json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a", "b"]}]}),
            "3 elements, but its data holds 2",
        ),
        (
            json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": [["a", "b"]]}]}),
            "does not follow its shape [2, 1]",
        ),
        (
            json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [7]}]}),
            "Element 0 of input `text` (BYTES) must be a string",
        ),
        (
            json!({"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}),
            "has no input `prompt`; its inputs are `text`, `truncate`",
        ),
        (json!({"inputs": []}), "needs input `text`"),
        (
            json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [""]}]}),
            "`text` is an empty string",
        ),
        (
            json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
                   "outputs": [{"name": "logits"}]}),
            "has no output `logits`; its output is `embedding`",
        ),
        (
            json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1]}]}),
            "has no `data` and no `binary_data_size`",
        ),
        (json!({"input": []}), "missing field `inputs`"),
    ];
    for (body, needle) in cases {
        assert_v2_error(post(body).await, 400, needle);
    }
    let one =
        json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}]});
    let other = |path: &str| {
        let url = s.url(path);
        let body = serde_json::to_vec(&one).unwrap();
        async move {
            let (c, _, b) = post_raw(&url, body, None, None).await;
            (c, b)
        }
    };
    assert_v2_error(
        other("/v2/models/nope/infer").await,
        404,
        "`nope` does not exist",
    );
    assert_v2_error(
        other("/v2/models/minilm/versions/2/infer").await,
        404,
        "has no version `2`",
    );
    assert_v2_error(
        other("/v2/models/minilm/generate").await,
        400,
        "is an embedding model",
    );
    // A form or text/plain body (what any web page can make a browser send) is refused.
    let (c, _, b) = post_raw(
        &url,
        serde_json::to_vec(&one).unwrap(),
        None,
        Some("text/plain"),
    )
    .await;
    assert_v2_error((c, b), 415, "Content-Type");
    // The wrong method and unknown paths under /v2 answer in the protocol's shape too.
    let r = reqwest::get(&url).await.unwrap();
    let (c, b) = (r.status().as_u16(), r.bytes().await.unwrap().to_vec());
    assert_v2_error((c, b), 405, "does not accept that HTTP method");
    let r = reqwest::get(s.url("/v2/nothing")).await.unwrap();
    let (c, b) = (r.status().as_u16(), r.bytes().await.unwrap().to_vec());
    assert_v2_error((c, b), 404, "No endpoint at `/v2/nothing`");
    // Every one of these was counted, under its endpoint where a handler ran.
    let metrics = reqwest::get(s.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let bad = metric_sum(
        &metrics,
        "wattserve_requests_total",
        "model=\"minilm\",endpoint=\"v2_infer\",status=\"400\"",
    );
    assert!(bad >= 11.0, "{metrics}");
    s.stop().await.unwrap();
}

/// The `energy_joules` etc. of a gRPC response's parameters (sent as decimal text).
fn grpc_param(p: &std::collections::HashMap<String, pb::InferParameter>, name: &str) -> f64 {
    match &p[name].parameter_choice {
        Some(ParameterChoice::StringParam(s)) => s.parse().unwrap(),
        other => panic!("{name}: {other:?}"),
    }
}

fn grpc_request(texts: &[&str]) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: "minilm-metered".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "text".into(),
            datatype: "BYTES".into(),
            shape: vec![texts.len() as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![raw_strings(texts)],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_gives_the_same_embeddings_and_energy_adds_up() {
    if !common::minilm_available() {
        return;
    }
    let s = TestServer::start_with(
        |c| {
            c.energy.source = SourceChoice::Estimate;
            c.server.grpc_port = Some(0);
        },
        |m| m[0].spec.name = "minilm-metered".into(),
    )
    .await;
    let label = "model=\"minilm-metered\"";
    let before = s.metrics(None).await;
    let client = reqwest::Client::new();
    let grpc_url = format!("http://{}", s.grpc_addr.unwrap());
    let mut grpc = GrpcInferenceServiceClient::connect(grpc_url).await.unwrap();

    // The reference: OpenAI JSON.
    let (_, _, v) = common::post_json(
        &s,
        "/v1/embeddings",
        json!({"model": "minilm-metered", "input": TEXTS}),
    )
    .await;
    let reference: Vec<f32> = (0..3)
        .flat_map(|i| {
            v["data"][i]["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    let mut joules = v["usage"]["energy"]["joules"].as_f64().unwrap();

    for round in 0..3 {
        // V2 JSON.
        let r = client
            .post(s.url("/v2/models/minilm-metered/infer"))
            .json(&text_input(json!([3]), json!({"data": TEXTS})))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let header_joules: f64 = r.headers()["x-energy-joules"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let v: Value = r.json().await.unwrap();
        let out: Vec<f32> = v["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(out, reference, "V2 JSON, round {round}");
        let p = &v["parameters"];
        // The same number (serde_json's default float parsing may be off by an ulp).
        let param = p["energy_joules"].as_f64().unwrap();
        assert!(
            (param - header_joules).abs() <= 1e-12 * header_joules,
            "{param} vs {header_joules}"
        );
        assert_eq!(p["energy_source"], "estimate");
        assert!(p["co2e_grams"].as_f64().unwrap() > 0.0, "{p}");
        assert!(p["cost_usd"].as_f64().unwrap() > 0.0, "{p}");
        assert!(p["batch_size"].as_u64().unwrap() >= 1, "{p}");
        assert_eq!(p["precision"], "f32");
        joules += header_joules;

        // V2 binary, [N, 1], binary output for all outputs.
        let mut header = text_input(
            json!([3, 1]),
            json!({"parameters": {"binary_data_size": raw_strings(&TEXTS).len()}}),
        );
        header["parameters"] = json!({"binary_data_output": true});
        let (body, len) = binary_body(&header, &raw_strings(&TEXTS));
        let (c, h, b) = post_raw(
            &s.url("/v2/models/minilm-metered/versions/1/infer"),
            body,
            Some(&len.to_string()),
            Some("application/octet-stream"),
        )
        .await;
        assert_eq!(c, 200);
        let json_len: usize = h["inference-header-content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let meta: Value = serde_json::from_slice(&b[..json_len]).unwrap();
        let out: Vec<f32> = b[json_len..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(out, reference, "V2 binary, round {round}");
        joules += meta["parameters"]["energy_joules"].as_f64().unwrap();

        // gRPC, raw contents; the metering values also in the trailers.
        let resp = grpc.model_infer(grpc_request(&TEXTS)).await.unwrap();
        let (_, body, _) = resp.into_parts();
        let out: Vec<f32> = body.raw_output_contents[0]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(out, reference, "gRPC, round {round}");
        assert_eq!(body.outputs[0].shape, vec![3, 384]);
        joules += grpc_param(&body.parameters, "energy_joules");
    }
    // The trailing metadata of a gRPC call carries the same number as its parameters.
    let resp = grpc.model_infer(grpc_request(&TEXTS[..1])).await.unwrap();
    let from_params = grpc_param(&resp.get_ref().parameters, "energy_joules");
    joules += from_params;
    // tonic merges trailers into the response metadata of a unary call.
    let trailer: f64 = resp
        .metadata()
        .get("x-energy-joules")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(trailer, from_params);
    assert_eq!(resp.metadata().get("x-model").unwrap(), "minilm-metered");

    let after = s.metrics(None).await;
    let delta = metric_sum(&after, "wattserve_energy_joules_total", label)
        - metric_sum(&before, "wattserve_energy_joules_total", label);
    assert!(
        (delta - joules).abs() <= 1e-9 * joules.max(1.0),
        "Σ energy_joules {joules} vs metric delta {delta}"
    );
    let requests = |endpoint: &str| {
        metric_sum(
            &after,
            "wattserve_requests_total",
            &format!("{label},endpoint=\"{endpoint}\",status=\"200\""),
        )
    };
    assert_eq!(requests("v2_infer"), 6.0, "{after}");
    assert_eq!(requests("grpc_infer"), 4.0, "{after}");
    assert_eq!(requests("embeddings"), 1.0);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_apply_to_v2_and_grpc() {
    if !common::minilm_available() {
        return;
    }
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "team-a {}", sha256_hex("sk-a")).unwrap();
    let path = file.path().to_path_buf();
    let s = TestServer::start(move |c| {
        c.auth.keys_file = Some(path);
        c.server.grpc_port = Some(0);
    })
    .await;
    let body = text_input(json!([1]), json!({"data": ["hello"]}));
    let client = reqwest::Client::new();
    let r = client
        .post(s.url("/v2/models/minilm/infer"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let (c, b) = (r.status().as_u16(), r.bytes().await.unwrap().to_vec());
    assert_v2_error((c, b), 401, "No API key provided");
    let r = client
        .post(s.url("/v2/models/minilm/infer"))
        .header("authorization", "Bearer sk-a")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let mut grpc = GrpcInferenceServiceClient::connect(format!("http://{}", s.grpc_addr.unwrap()))
        .await
        .unwrap();
    let mut req = grpc_request(&["hello"]);
    req.model_name = "minilm".into();
    let e = grpc.model_infer(req.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    assert!(e.message().contains("No API key provided"), "{e}");
    let e = grpc
        .server_ready(tonic::Request::new(pb::ServerReadyRequest {}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let mut authed = tonic::Request::new(req);
    authed
        .metadata_mut()
        .insert("x-api-key", "sk-a".parse().unwrap());
    let resp = grpc.model_infer(authed).await.unwrap();
    assert_eq!(resp.get_ref().outputs[0].shape, vec![1, 384]);
    // The refusals were counted: the HTTP one under its endpoint, the gRPC ones as `grpc`.
    let metrics = s.metrics(Some("sk-a")).await;
    let refused = |endpoint: &str| {
        metric_sum(
            &metrics,
            "wattserve_requests_total",
            &format!("model=\"unknown\",endpoint=\"{endpoint}\",status=\"401\""),
        )
    };
    assert_eq!(refused("v2_infer"), 1.0, "{metrics}");
    assert_eq!(refused("grpc"), 2.0, "{metrics}");
    s.stop().await.unwrap();
}
