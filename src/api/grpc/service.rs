//! `GRPCInferenceService`: each call converted to and from the transport-independent types of
//! [`crate::api::v2`], errors mapped to gRPC status codes, every call to `ModelInfer` counted
//! in `wattserve_requests_total` as `grpc_infer`.

use std::collections::HashMap;
use std::time::Instant;

use axum::http::HeaderMap;
use serde_json::Value;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

use super::pb;
use super::pb::grpc_inference_service_server::GrpcInferenceService;
use super::pb::infer_parameter::ParameterChoice;
use crate::api::auth::Auth;
use crate::api::handler::RequestMetrics;
use crate::api::meta::readiness;
use crate::api::usage::{set_energy_headers, usage_record, RequestFacts};
use crate::api::v2::infer::{self, InferRequest, Inferred};
use crate::api::v2::params::Params;
use crate::api::v2::rest::ServerMetadata;
use crate::api::v2::tensor::{DataType, Elements, InputTensor};
use crate::api::{ApiError, AppState};
use crate::governance::{Project, Tenant};

/// The service, over the server's shared state.
pub struct InferenceService {
    state: AppState,
}

impl InferenceService {
    /// The service for `state`'s models.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

/// The interceptor: admits a call with a valid API key (or any call when keys are off) and
/// attaches its tenant; refuses the others with `UNAUTHENTICATED`.
pub fn admit(auth: &Auth, mut req: Request<()>) -> Result<Request<()>, Status> {
    let headers: HeaderMap = req.metadata().clone().into_headers();
    match auth.charge("grpc", &headers) {
        Ok((grant, project)) => {
            req.extensions_mut().insert(grant.tenant);
            req.extensions_mut().insert(project);
            Ok(req)
        }
        Err(e) => {
            crate::metrics::record_request(
                "unknown",
                "grpc",
                e.status.as_u16(),
                Default::default(),
            );
            Err(status(e))
        }
    }
}

/// The gRPC status for an error of the HTTP API.
pub fn status(e: ApiError) -> Status {
    let code = match e.status.as_u16() {
        400 | 413 | 415 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        404 => Code::NotFound,
        405 => Code::Unimplemented,
        408 | 504 => Code::DeadlineExceeded,
        429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        _ => Code::Internal,
    };
    Status::new(code, e.message)
}

/// A request parameter as JSON (the REST form every parameter is read from).
fn param_value(p: pb::InferParameter) -> Value {
    match p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => Value::Bool(b),
        Some(ParameterChoice::Int64Param(i)) => Value::from(i),
        Some(ParameterChoice::Uint64Param(u)) => Value::from(u),
        Some(ParameterChoice::DoubleParam(d)) => Value::from(d),
        Some(ParameterChoice::StringParam(s)) => Value::String(s),
        None => Value::Null,
    }
}

fn params_in(map: HashMap<String, pb::InferParameter>) -> Params {
    map.into_iter().map(|(k, v)| (k, param_value(v))).collect()
}

/// A response parameter as gRPC sends it: integers as `int64_param`, other numbers as
/// `string_param` holding the number's shortest decimal text (KServe's proto has no double).
fn param_out(v: &Value) -> pb::InferParameter {
    let choice = match v {
        Value::Bool(b) => ParameterChoice::BoolParam(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => ParameterChoice::Int64Param(i),
            None => ParameterChoice::StringParam(n.to_string()),
        },
        Value::String(s) => ParameterChoice::StringParam(s.clone()),
        other => ParameterChoice::StringParam(other.to_string()),
    };
    pb::InferParameter {
        parameter_choice: Some(choice),
    }
}

/// The elements of a gRPC input: its raw bytes, else its typed contents.
fn elements(
    input: &mut pb::model_infer_request::InferInputTensor,
    raw: Option<Vec<u8>>,
) -> Elements {
    if let Some(raw) = raw {
        return Elements::Raw(raw);
    }
    let c = input.contents.take().unwrap_or_default();
    if !c.bytes_contents.is_empty() {
        Elements::ByteStrings(c.bytes_contents)
    } else if !c.bool_contents.is_empty() {
        Elements::Bools(c.bool_contents)
    } else {
        let other = c.int_contents.len()
            + c.int64_contents.len()
            + c.uint_contents.len()
            + c.uint64_contents.len()
            + c.fp32_contents.len()
            + c.fp64_contents.len();
        match DataType::parse(&input.datatype) {
            Some(DataType::Bytes) if other == 0 => Elements::ByteStrings(Vec::new()),
            Some(DataType::Bool) if other == 0 => Elements::Bools(Vec::new()),
            _ => Elements::Other(other),
        }
    }
}

/// The transport-independent request of a `ModelInfer` call.
fn decode(req: pb::ModelInferRequest) -> Result<InferRequest, ApiError> {
    let raw = req.raw_input_contents;
    if !raw.is_empty() && raw.len() != req.inputs.len() {
        return Err(ApiError::bad_request(
            "invalid_tensor",
            format!(
                "raw_input_contents has {} entries for {} inputs; send one per input, in order",
                raw.len(),
                req.inputs.len()
            ),
        ));
    }
    let mut raw = raw.into_iter();
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for mut input in req.inputs {
        let raw = raw.next();
        if raw.is_some() && input.contents.is_some() {
            return Err(ApiError::bad_request(
                "invalid_tensor",
                format!(
                    "Input `{}` has `contents` while the request uses raw_input_contents; use one form",
                    input.name
                ),
            )
            .with_param(input.name));
        }
        let elements = elements(&mut input, raw);
        inputs.push(InputTensor {
            name: input.name,
            datatype: input.datatype,
            shape: input.shape,
            elements,
        });
    }
    Ok(InferRequest {
        model: req.model_name,
        version: Some(req.model_version).filter(|v| !v.is_empty()),
        id: Some(req.id).filter(|id| !id.is_empty()),
        params: params_in(req.parameters),
        inputs,
        outputs: req.outputs.into_iter().map(|o| o.name).collect(),
    })
}

/// The `ModelInfer` response: outputs as `raw_output_contents`, the parameters, and the
/// serving and metering values as metadata (the latter moved to trailers on the way out).
fn encode(out: &Inferred<'_>, started: Instant) -> Response<pb::ModelInferResponse> {
    let outputs = out
        .outputs
        .iter()
        .map(|t| pb::model_infer_response::InferOutputTensor {
            name: t.name.to_string(),
            datatype: t.datatype().name().to_string(),
            shape: t.shape.clone(),
            parameters: HashMap::new(),
            contents: None,
        })
        .collect();
    let body = pb::ModelInferResponse {
        model_name: out.model.name.clone(),
        model_version: infer::VERSION.to_string(),
        id: out.id.clone().unwrap_or_default(),
        parameters: out
            .parameters()
            .iter()
            .map(|(k, v)| (k.clone(), param_out(v)))
            .collect(),
        outputs,
        raw_output_contents: out.outputs.iter().map(|t| t.raw()).collect(),
    };
    let mut headers = HeaderMap::new();
    out.serving(started).write(&mut headers);
    if let Some(e) = &out.energy {
        set_energy_headers(&mut headers, e);
    }
    let mut resp = Response::new(body);
    *resp.metadata_mut() = MetadataMap::from_headers(headers);
    resp
}

fn model_metadata(m: &infer::ModelMetadata) -> pb::ModelMetadataResponse {
    let tensors = |ts: &[infer::TensorMetadata]| {
        ts.iter()
            .map(|t| pb::model_metadata_response::TensorMetadata {
                name: t.name.to_string(),
                datatype: t.datatype.to_string(),
                shape: t.shape.clone(),
            })
            .collect()
    };
    pb::ModelMetadataResponse {
        name: m.name.clone(),
        versions: m.versions.iter().map(|v| v.to_string()).collect(),
        platform: m.platform.to_string(),
        inputs: tensors(&m.inputs),
        outputs: tensors(&m.outputs),
    }
}

fn version(v: &str) -> Option<&str> {
    Some(v).filter(|v| !v.is_empty())
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let ready = readiness(&self.state).is_ok();
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = req.into_inner();
        // An unknown model or version is NOT_FOUND; `readiness` fails when any model's compute
        // thread stopped, this one's included.
        infer::find(&self.state, &r.name, version(&r.version)).map_err(status)?;
        let ready = readiness(&self.state).is_ok();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        let m = ServerMetadata::get();
        Ok(Response::new(pb::ServerMetadataResponse {
            name: m.name.to_string(),
            version: m.version.to_string(),
            // The REST extensions (binary tensors, generate) have no gRPC counterpart here.
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = req.into_inner();
        let model = infer::find(&self.state, &r.name, version(&r.version)).map_err(status)?;
        Ok(Response::new(model_metadata(&infer::metadata(model))))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let _in_flight = crate::metrics::InFlight::enter("grpc_infer");
        let tenant = req
            .extensions()
            .get::<Tenant>()
            .map_or_else(|| "-".to_string(), |t| t.0.clone());
        let project = req
            .extensions()
            .get::<Project>()
            .map_or_else(|| "-".to_string(), |p| p.0.clone());
        let request_id = req
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_string);
        let req = req.into_inner();
        let state = &self.state;
        let metrics = RequestMetrics::start(state, &req.model_name, "grpc_infer");
        let started = metrics.started();
        let budgets = state.usage().and_then(|u| u.budgets.clone());
        let work = async {
            if let Some(b) = &budgets {
                crate::api::budget::check(b, &tenant, &project)?;
            }
            let out = infer::infer(state, decode(req)?, &tenant).await?;
            Ok::<_, ApiError>((encode(&out, started), out.report()))
        };
        let result = match tokio::time::timeout(state.limits().request_timeout(), work).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::timeout(state.limits().request_timeout_ms)),
        };
        let code = result.as_ref().map_or_else(|e| e.status.as_u16(), |_| 200);
        metrics.finish_status(code);
        {
            let facts = RequestFacts {
                request_id,
                tenant,
                project,
                endpoint: "grpc_infer",
                status: code,
                duration_ms: started.elapsed().as_secs_f64() * 1e3,
            };
            let report = result.as_ref().ok().map(|(_, r)| r.clone());
            let record = usage_record(facts, report);
            if let Some(usage) = state.usage() {
                if let Some(b) = &usage.budgets {
                    b.spend_record(&record);
                }
                usage.ledger.record(record);
            }
        }
        result.map(|(resp, _)| resp).map_err(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(choice: ParameterChoice) -> pb::InferParameter {
        pb::InferParameter {
            parameter_choice: Some(choice),
        }
    }

    #[test]
    fn parameters_convert_both_ways() {
        assert_eq!(param_value(param(ParameterChoice::DoubleParam(0.5))), 0.5);
        assert_eq!(param_value(param(ParameterChoice::Int64Param(-3))), -3);
        assert_eq!(
            param_value(param(ParameterChoice::StringParam("x".into()))),
            "x"
        );
        let out = param_out(&Value::from(0.125));
        assert_eq!(
            out.parameter_choice,
            Some(ParameterChoice::StringParam("0.125".into()))
        );
        let out = param_out(&Value::from(7));
        assert_eq!(out.parameter_choice, Some(ParameterChoice::Int64Param(7)));
    }

    #[test]
    fn raw_contents_must_match_the_inputs() {
        let input = |name: &str| pb::model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            parameters: HashMap::new(),
            contents: None,
        };
        let req = pb::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![input("a"), input("b")],
            raw_input_contents: vec![vec![0, 0, 0, 0]],
            ..Default::default()
        };
        let e = decode(req).unwrap_err();
        assert!(
            e.message.contains("1 entries for 2 inputs"),
            "{}",
            e.message
        );
        let req = pb::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![input("a")],
            ..Default::default()
        };
        let r = decode(req).unwrap();
        assert!(matches!(&r.inputs[0].elements, Elements::ByteStrings(v) if v.is_empty()));
        assert_eq!(
            status(ApiError::bad_request("x", "y")).code(),
            Code::InvalidArgument
        );
        assert_eq!(status(ApiError::timeout(1)).code(), Code::DeadlineExceeded);
    }
}
