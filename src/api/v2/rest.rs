//! The REST side of the Open Inference Protocol: server and model metadata, health, and
//! `infer` with JSON or binary tensors, on the same listener (and layers: request id, API
//! keys, body limit) as the OpenAI API. Errors are `{"error": "..."}`.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::binary::{self, BinaryPart};
use super::infer::{self, InferRequest, Inferred, ModelMetadata};
use super::params::Params;
use super::tensor::{Elements, InputTensor, OutputData};
use crate::api::handler::RequestMetrics;
use crate::api::json::{is_json, read_body};
use crate::api::meta::readiness;
use crate::api::usage::set_energy_headers;
use crate::api::{ApiError, AppState};

/// Extensions of the protocol this server implements (`GET /v2`).
pub const EXTENSIONS: [&str; 2] = ["binary_tensor_data", "generate"];

/// A model's path: `/v2/models/{model}` with an optional `/versions/{version}`.
#[derive(Debug, Deserialize)]
pub struct ModelPath {
    /// The model's name.
    pub model: String,
    /// The version, when the path names one.
    #[serde(default)]
    pub version: Option<String>,
}

/// `GET /v2`: the server's name, version and extensions.
#[derive(Debug, Serialize)]
pub struct ServerMetadata {
    /// `wattserve`.
    pub name: &'static str,
    /// The server's version.
    pub version: &'static str,
    /// What it implements beyond the core protocol.
    pub extensions: Vec<&'static str>,
}

impl ServerMetadata {
    /// This server's metadata.
    pub fn get() -> Self {
        Self {
            name: "wattserve",
            version: env!("CARGO_PKG_VERSION"),
            extensions: EXTENSIONS.to_vec(),
        }
    }
}

/// `GET /v2`.
pub async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata::get())
}

/// `GET /v2/health/live`: 200 while the process serves HTTP.
pub async fn live() -> Json<Value> {
    Json(serde_json::json!({ "live": true }))
}

/// `GET /v2/health/ready`: 200 when ready for inference, else 503 (loading, shutting down, a
/// model's compute thread stopped).
pub async fn ready(State(state): State<AppState>) -> Response {
    match readiness(&state) {
        Ok(_) => Json(serde_json::json!({ "ready": true })).into_response(),
        Err(e) => e.into_v2_response(),
    }
}

/// `GET /v2/models/{m}[/versions/{v}]`: the model's tensors.
pub async fn model_metadata(State(state): State<AppState>, Path(p): Path<ModelPath>) -> Response {
    match infer::find(&state, &p.model, p.version.as_deref()) {
        Ok(model) => Json::<ModelMetadata>(infer::metadata(model)).into_response(),
        Err(e) => e.into_v2_response(),
    }
}

/// `GET /v2/models/{m}[/versions/{v}]/ready`: 200 when the model can serve, 503 when not, 404
/// for an unknown model.
pub async fn model_ready(State(state): State<AppState>, Path(p): Path<ModelPath>) -> Response {
    let model = match infer::find(&state, &p.model, p.version.as_deref()) {
        Ok(model) => model,
        Err(e) => return e.into_v2_response(),
    };
    // `readiness` fails when any model's compute thread stopped, this one's included.
    match readiness(&state) {
        Ok(_) => Json(serde_json::json!({ "name": model.name, "ready": true })).into_response(),
        Err(e) => e.into_v2_response(),
    }
}

/// An infer request body as sent: JSON, or JSON followed by binary tensors.
///
/// Accepted content types are JSON, `application/octet-stream` and none at all (what
/// `tritonclient.http` sends); a `text/plain` or form body, which any web page can make a
/// browser send without a CORS check, is refused (415) as on the OpenAI endpoints.
pub struct InferBody {
    request: InferRequestBody,
    binary: Vec<u8>,
}

/// The JSON of an infer request.
#[derive(Debug, Deserialize)]
struct InferRequestBody {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Params,
    inputs: Vec<RestInput>,
    #[serde(default)]
    outputs: Vec<RestOutput>,
}

#[derive(Debug, Deserialize)]
struct RestInput {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    #[serde(default)]
    parameters: Params,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct RestOutput {
    name: String,
    #[serde(default)]
    parameters: Params,
}

/// Reads a `/v2` request body after checking its content type (JSON, octet-stream or none),
/// with the protocol's errors; also returns the `Inference-Header-Content-Length` header.
pub async fn read_v2_body(
    req: Request,
    state: &AppState,
) -> Result<(axum::body::Bytes, Option<String>), Response> {
    let reject = |e: ApiError| e.into_v2_response();
    if let Some(t) = req.headers().get(header::CONTENT_TYPE) {
        let t = t.to_str().unwrap_or("(not text)");
        let essence = t.split(';').next().unwrap_or_default().trim();
        if !is_json(t) && !essence.eq_ignore_ascii_case("application/octet-stream") {
            return Err(reject(ApiError::unsupported_media_type(Some(t))));
        }
    }
    let header_length = req
        .headers()
        .get(binary::HEADER_LENGTH)
        .map(|v| v.to_str().unwrap_or("(not text)").to_string());
    let body = read_body(req, state).await.map_err(reject)?;
    Ok((body, header_length))
}

impl FromRequest<AppState> for InferBody {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let reject = |e: ApiError| e.into_v2_response();
        let (body, header_length) = read_v2_body(req, state).await?;
        let (json, bin) = binary::split_body(&body, header_length.as_deref()).map_err(reject)?;
        if json.is_empty() {
            return Err(reject(ApiError::bad_request(
                "invalid_json",
                "The request body is empty; send the inference request as JSON",
            )));
        }
        let request: InferRequestBody = serde_json::from_slice(json).map_err(|e| {
            reject(ApiError::bad_request(
                "invalid_json",
                format!("The inference request is not valid: {e}"),
            ))
        })?;
        Ok(InferBody {
            request,
            binary: bin.to_vec(),
        })
    }
}

/// How the response should carry each output: in binary when its `binary_data` parameter
/// says so, else as the request's `binary_data_output` parameter says (default JSON).
struct OutputForm {
    default_binary: bool,
    asked: Vec<(String, Option<bool>)>,
}

impl OutputForm {
    fn binary(&self, name: &str) -> bool {
        self.asked
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, b)| *b)
            .unwrap_or(self.default_binary)
    }
}

impl InferBody {
    /// The protocol-neutral request for `path`, and how to shape its outputs.
    fn decode(self, path: ModelPath) -> Result<(InferRequest, OutputForm), ApiError> {
        let InferBody { request, binary } = self;
        let mut part = BinaryPart::new(&binary);
        let mut inputs = Vec::with_capacity(request.inputs.len());
        for input in request.inputs {
            let elements = match (
                binary::binary_size(&input.name, &input.parameters)?,
                input.data,
            ) {
                (Some(_), Some(_)) => {
                    return Err(ApiError::bad_request(
                        "invalid_tensor",
                        format!(
                            "Input `{}` has both `data` and `binary_data_size`; send one",
                            input.name
                        ),
                    )
                    .with_param(input.name))
                }
                (Some(size), None) => Elements::Raw(part.take(&input.name, size)?.to_vec()),
                (None, Some(data)) => Elements::Json(data),
                (None, None) => {
                    return Err(ApiError::bad_request(
                        "invalid_tensor",
                        format!(
                            "Input `{}` has no `data` and no `binary_data_size`",
                            input.name
                        ),
                    )
                    .with_param(input.name))
                }
            };
            inputs.push(InputTensor {
                name: input.name,
                datatype: input.datatype,
                shape: input.shape,
                elements,
            });
        }
        part.finish()?;
        let flag = |p: &Params, name: &str| p.get(name).and_then(Value::as_bool);
        let form = OutputForm {
            default_binary: flag(&request.parameters, "binary_data_output").unwrap_or(false),
            asked: request
                .outputs
                .iter()
                .map(|o| (o.name.clone(), flag(&o.parameters, "binary_data")))
                .collect(),
        };
        let req = InferRequest {
            model: path.model,
            version: path.version,
            id: request.id,
            params: request.parameters,
            inputs,
            outputs: request.outputs.into_iter().map(|o| o.name).collect(),
        };
        Ok((req, form))
    }
}

/// `POST /v2/models/{m}[/versions/{v}]/infer`.
pub async fn infer(
    State(state): State<AppState>,
    Path(path): Path<ModelPath>,
    tenant: Option<axum::Extension<crate::governance::Tenant>>,
    body: Result<InferBody, Response>,
) -> Response {
    let metrics = RequestMetrics::start(&state, &path.model, "v2_infer");
    let tenant = crate::api::handler::tenant_name(tenant.as_ref().map(|axum::Extension(t)| t));
    let started = metrics.started();
    let work = async {
        let (req, form) = body.map_err(Rejected)?.decode(path).map_err(Failed)?;
        let out = infer::infer(&state, req, tenant).await.map_err(Failed)?;
        Ok::<_, Answer>(respond(&out, &form, started))
    };
    let resp = match tokio::time::timeout(state.limits().request_timeout(), work).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(Rejected(resp))) => resp,
        Ok(Err(Failed(e))) => e.into_v2_response(),
        Err(_) => ApiError::timeout(state.limits().request_timeout_ms).into_v2_response(),
    };
    metrics.finish(resp)
}

/// Why an infer request did not succeed: its body was refused (already a response), or it
/// failed later.
enum Answer {
    Rejected(Response),
    Failed(ApiError),
}
use Answer::{Failed, Rejected};

/// One output in the response's JSON.
#[derive(Serialize)]
struct RestOutputTensor<'a> {
    name: &'static str,
    datatype: &'static str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Params>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a OutputData>,
}

/// The response's JSON.
#[derive(Serialize)]
struct RestInferResponse<'a> {
    model_name: &'a str,
    model_version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    parameters: Params,
    outputs: Vec<RestOutputTensor<'a>>,
}

/// The 200: JSON alone, or JSON followed by the outputs asked for in binary; with the serving
/// and metering headers.
fn respond(out: &Inferred<'_>, form: &OutputForm, started: Instant) -> Response {
    let mut binary = Vec::new();
    let outputs = out
        .outputs
        .iter()
        .map(|t| {
            let mut o = RestOutputTensor {
                name: t.name,
                datatype: t.datatype().name(),
                shape: &t.shape,
                parameters: None,
                data: Some(&t.data),
            };
            if form.binary(t.name) {
                let raw = t.raw();
                let mut p = Params::new();
                p.insert("binary_data_size".into(), Value::from(raw.len()));
                o.parameters = Some(p);
                o.data = None;
                binary.extend_from_slice(&raw);
            }
            o
        })
        .collect();
    let body = RestInferResponse {
        model_name: &out.model.name,
        model_version: infer::VERSION,
        id: out.id.as_deref(),
        parameters: out.parameters(),
        outputs,
    };
    let mut resp = if binary.is_empty() {
        Json(body).into_response()
    } else {
        match serde_json::to_vec(&body) {
            Ok(mut bytes) => {
                let json_len = bytes.len();
                bytes.extend_from_slice(&binary);
                let mut resp = Response::new(Body::from(bytes));
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                h.insert(binary::HEADER_LENGTH, HeaderValue::from(json_len));
                resp
            }
            Err(e) => {
                return ApiError::internal(format!("could not serialize the response: {e}"))
                    .into_v2_response()
            }
        }
    };
    out.serving(started).write(resp.headers_mut());
    if let Some(e) = &out.energy {
        set_energy_headers(resp.headers_mut(), e);
    }
    crate::api::handler::set_cache_header(resp.headers_mut(), out.cache);
    resp.extensions_mut().insert(out.report());
    debug_assert_eq!(resp.status(), StatusCode::OK);
    resp
}
