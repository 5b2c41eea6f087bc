//! Request and response `parameters` of the Open Inference Protocol, as a JSON object whatever
//! the transport (gRPC's `InferParameter`s are converted to and from it): the sampling options a
//! generation request may set, `truncate` for embeddings, and what every response says it cost.

use serde_json::{Map, Number, Value};

use crate::api::openai::completions::wire::GenerationFields;
use crate::api::usage::UsageEnergy;
use crate::api::ApiError;
use crate::engine::Precision;

/// Parameters: names to values.
pub type Params = Map<String, Value>;

/// The sampling parameters a generation request may set. Others are ignored: clients send their
/// own (Triton's `sequence_id`, `binary_data_output`, ...).
pub const SAMPLING: [&str; 7] = [
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "ignore_eos",
];

/// What kind of value a sampling parameter takes.
#[derive(Clone, Copy)]
enum Kind {
    Integer,
    Float,
    Bool,
    Stop,
}

fn kind(name: &str) -> Kind {
    match name {
        "max_tokens" | "top_k" | "seed" => Kind::Integer,
        "temperature" | "top_p" => Kind::Float,
        "ignore_eos" => Kind::Bool,
        _ => Kind::Stop,
    }
}

fn bad(name: &str, message: String) -> ApiError {
    ApiError::bad_request("invalid_value", message).with_param(name.to_string())
}

/// `value` as parameter `name` takes it. Numbers may come as text (KServe's gRPC parameters
/// hold no floats) and integral floats as integers.
fn coerce(name: &str, value: &Value) -> Result<Value, ApiError> {
    let text = value.as_str().map(str::trim);
    match kind(name) {
        Kind::Integer => {
            let n = match value {
                Value::Number(n) => n.as_i64().or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                        .map(|f| f as i64)
                }),
                _ => text.and_then(|t| t.parse::<i64>().ok()),
            };
            n.map(Value::from).ok_or_else(|| {
                bad(
                    name,
                    format!("Parameter `{name}` must be an integer, got {value}"),
                )
            })
        }
        Kind::Float => {
            let f = match value {
                Value::Number(n) => n.as_f64(),
                _ => text.and_then(|t| t.parse::<f64>().ok()),
            };
            f.and_then(Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| {
                    bad(
                        name,
                        format!("Parameter `{name}` must be a number, got {value}"),
                    )
                })
        }
        Kind::Bool => match (value, text) {
            (Value::Bool(b), _) => Ok(Value::Bool(*b)),
            (_, Some("true")) => Ok(Value::Bool(true)),
            (_, Some("false")) => Ok(Value::Bool(false)),
            _ => Err(bad(
                name,
                format!("Parameter `{name}` must be true or false, got {value}"),
            )),
        },
        // A string or a list of strings: the validation of completions checks them.
        Kind::Stop => Ok(value.clone()),
    }
}

/// The generation options of a request's `parameters`, checked later as a completion's are.
pub fn generation_fields(params: &Params) -> Result<GenerationFields, ApiError> {
    let mut fields = Map::new();
    for name in SAMPLING {
        if let Some(v) = params.get(name).filter(|v| !v.is_null()) {
            fields.insert(name.to_string(), coerce(name, v)?);
        }
    }
    serde_json::from_value(Value::Object(fields))
        .map_err(|e| ApiError::bad_request("invalid_value", format!("Invalid parameters: {e}")))
}

/// The `truncate` parameter (embeddings), if given.
pub fn truncate(params: &Params) -> Result<Option<bool>, ApiError> {
    match params.get("truncate") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => coerce("ignore_eos", v).map(|v| v.as_bool()).map_err(|_| {
            bad(
                "truncate",
                format!("Parameter `truncate` must be true or false, got {v}"),
            )
        }),
    }
}

/// What a response's `parameters` say about how it was served and what it cost: `batch_size`,
/// `precision`, and when metered `energy_joules`, `energy_source`, `co2e_grams`, `cost_usd`
/// (the numbers of the metering headers).
pub fn served(batch_size: usize, precision: Precision, energy: Option<&UsageEnergy>) -> Params {
    let mut p = Params::new();
    p.insert("batch_size".into(), Value::from(batch_size));
    p.insert("precision".into(), Value::from(precision.to_string()));
    if let Some(e) = energy {
        p.insert("energy_joules".into(), Value::from(e.joules));
        p.insert("energy_source".into(), Value::from(e.source));
        p.insert("co2e_grams".into(), Value::from(e.co2e_grams));
        p.insert("cost_usd".into(), Value::from(e.cost_usd));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> Params {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn sampling_parameters_accept_numbers_as_numbers_or_text() {
        let f = generation_fields(&params(json!({
            "max_tokens": 16, "temperature": "0.5", "top_p": 1, "top_k": "40",
            "seed": 7.0, "stop": ["\n"], "sequence_id": 3, "binary_data_output": true
        })))
        .unwrap();
        assert_eq!(f.max_tokens, Some(16));
        assert_eq!(f.temperature, Some(0.5));
        assert_eq!(f.top_p, Some(1.0));
        assert_eq!(f.top_k, Some(40));
        assert_eq!(f.seed, Some(7));
        assert_eq!(f.stop, Some(json!(["\n"])));
        assert!(!f.ignore_eos);
        let f = generation_fields(&Params::new()).unwrap();
        assert_eq!(f.max_tokens, None);
    }

    #[test]
    fn bad_parameters_name_themselves() {
        let e = generation_fields(&params(json!({"max_tokens": "many"}))).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.param.as_deref()),
            (400, Some("max_tokens"))
        );
        assert!(e.message.contains("must be an integer"), "{}", e.message);
        let e = generation_fields(&params(json!({"temperature": "hot"}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = generation_fields(&params(json!({"max_tokens": 1.5}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
    }

    #[test]
    fn truncate_is_a_boolean() {
        assert_eq!(truncate(&params(json!({}))).unwrap(), None);
        assert_eq!(
            truncate(&params(json!({"truncate": true}))).unwrap(),
            Some(true)
        );
        assert_eq!(
            truncate(&params(json!({"truncate": "false"}))).unwrap(),
            Some(false)
        );
        let e = truncate(&params(json!({"truncate": 2}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("truncate"));
    }
}
