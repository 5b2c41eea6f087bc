//! Embedding texts, whatever the protocol that asked: the checks every input gets (count, empty,
//! bytes), tokenizing on the blocking pool, the model's queue, and the request's energy. The
//! OpenAI, Open Inference Protocol and gRPC handlers shape the [`Embedded`] result each their way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{find_model, tokenize_blocking, Serving};
use crate::api::usage::{lookup_energy, settle_energy, with_lookup, UsageEnergy, UsageReport};
use crate::api::{ApiError, AppState};
use crate::batch::{EmbedOutput, EmbeddingScheduler};
use crate::cache::{CacheStatus, CachedEmbedding};
use crate::config::Limits;
use crate::engine::{EmbeddingTokenizer, TokenizeError};
use crate::meter::class::Work;
use crate::registry::{EmbeddingServing, ServedModel};

/// How a protocol names its inputs in errors: the field or tensor (`input`, `text`) and, for a
/// request of several texts, the element (`input[2]`).
#[derive(Debug, Clone, Copy)]
pub struct InputNames {
    /// The field or tensor holding the texts.
    pub field: &'static str,
    /// How many texts the request has.
    pub count: usize,
}

impl InputNames {
    /// The name of text `i`: the field alone for a single text, else `field[i]`.
    pub fn of(&self, i: usize) -> String {
        if self.count == 1 {
            self.field.to_string()
        } else {
            format!("{}[{i}]", self.field)
        }
    }
}

/// Embedding vectors of a request, with what they cost and how they were served.
pub struct Embedded<'a> {
    /// The model that computed them.
    pub model: &'a Arc<ServedModel>,
    /// One vector per text, in request order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens of all texts, special tokens included, padding excluded.
    pub prompt_tokens: usize,
    /// Energy, CO2e and cost; `None` when metering is off.
    pub energy: Option<UsageEnergy>,
    /// The largest batch any of its texts was computed in.
    pub batch_size: usize,
    /// Longest wait of its texts in the queue.
    pub queue_time: Duration,
    /// Compute time of the batches that served it.
    pub compute_time: Duration,
    /// What came from the response cache (`None` when the cache is off).
    pub cache: Option<CacheStatus>,
    /// Texts answered from the cache.
    pub cache_hits: usize,
}

impl Embedded<'_> {
    /// What the usage ledger records of it.
    pub fn report(&self) -> UsageReport {
        UsageReport::new(
            self.model,
            self.prompt_tokens,
            0,
            self.energy.as_ref(),
            self.batch_size,
        )
        .with_cache_hits(self.cache_hits)
    }

    /// The serving headers of the answer, `total` counted from `started`.
    pub fn serving(&self, started: Instant) -> Serving<'_> {
        Serving {
            model: self.model,
            batch_size: Some(self.batch_size),
            timing: vec![("queue", self.queue_time), ("compute", self.compute_time)],
            until_now: ("total", started),
        }
    }
}

/// Embeds `texts` with the embedding model `model_name` for `tenant`: checks them against the
/// limits, answers what it can from the response cache, tokenizes the rest (truncating
/// over-long ones when `truncate`), queues them, keeps their vectors in the cache and settles the
/// energy (the computed part's, plus the lookup's). Errors name the texts as `names` says.
pub async fn embed<'a>(
    state: &'a AppState,
    model_name: &str,
    texts: Vec<String>,
    truncate: bool,
    names: InputNames,
    tenant: &str,
) -> Result<Embedded<'a>, ApiError> {
    let (model, emb) = find_model::<EmbeddingServing>(state, model_name)?;
    check_texts(&texts, names, state.limits())?;
    let precision = model.precision.as_str();
    // From the cache: each text's vector and tokens, or the key to keep it under.
    let looked_up = Instant::now();
    let cached: Vec<Result<CachedEmbedding, Option<String>>> = match state.cache() {
        None => texts.iter().map(|_| Err(None)).collect(),
        Some((cache, _)) => texts
            .iter()
            .map(|t| {
                let key = cache.embedding_key(tenant, &model.name, precision, truncate, t);
                cache.get_embedding(&model.name, &key).ok_or(Some(key))
            })
            .collect(),
    };
    let lookup_seconds = looked_up.elapsed().as_secs_f64();
    let hits = cached.iter().filter(|c| c.is_ok()).count();
    let missing: Vec<String> = texts
        .iter()
        .zip(&cached)
        .filter(|(_, c)| c.is_err())
        .map(|(t, _)| t.clone())
        .collect();
    // Errors name a text by its place in the request, not among the missing ones.
    let places: Vec<usize> = (0..texts.len()).filter(|&i| cached[i].is_err()).collect();
    let computed = if missing.is_empty() {
        None
    } else {
        let tokenizer = emb.tokenizer.clone();
        let ids = tokenize_blocking(state, move || {
            tokenize_all(&tokenizer, &missing, truncate, names, &places)
        })
        .await?;
        let tokens: Vec<usize> = ids.iter().map(Vec::len).collect();
        let output = run(&emb.scheduler, ids).await?;
        Some((tokens, output))
    };
    let computed_tokens: usize = computed.as_ref().map_or(0, |(t, _)| t.iter().sum());
    crate::metrics::record_tokens(&model.name, "prompt", computed_tokens);
    let cached_tokens: usize = cached.iter().flatten().map(|c| c.tokens).sum();
    let prompt_tokens = computed_tokens + cached_tokens;
    // Energy: the batches' shares for what was computed, the lookup for what was not.
    let lookup = match (state.cache(), hits) {
        (Some((_, watts)), 1..) => lookup_energy(
            model,
            lookup_seconds,
            watts,
            Work::Embedding {
                input_tokens: cached_tokens,
            },
        ),
        _ => None,
    };
    let work = Work::Embedding {
        input_tokens: prompt_tokens,
    };
    let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(texts.len());
    let mut input_tokens: Vec<usize> = Vec::with_capacity(texts.len());
    let (energy, batch_size, queue_time, compute_time) = match computed {
        Some((tokens, output)) => {
            let settled = settle_energy(
                model,
                &output.energy,
                Work::Embedding {
                    input_tokens: computed_tokens,
                },
            )
            .await?;
            let energy = match (settled, &lookup) {
                (Some(e), Some(l)) => Some(with_lookup(model, e, l, work)),
                (e, _) => e,
            };
            let mut fresh = output.embeddings.into_iter().zip(tokens);
            for c in cached {
                match c {
                    Ok(hit) => {
                        input_tokens.push(hit.tokens);
                        vectors.push(hit.vector.as_ref().clone());
                    }
                    Err(key) => {
                        let Some((v, tokens)) = fresh.next() else {
                            return Err(ApiError::internal("the batch answered fewer vectors"));
                        };
                        input_tokens.push(tokens);
                        if let (Some((cache, _)), Some(key)) = (state.cache(), key) {
                            let value = CachedEmbedding {
                                vector: Arc::new(v.clone()),
                                tokens,
                            };
                            cache.put_embedding(&model.name, key, value);
                        }
                        vectors.push(v);
                    }
                }
            }
            (
                energy,
                output.batch_size,
                output.queue_time,
                output.compute_time,
            )
        }
        None => {
            for c in cached.into_iter().flatten() {
                input_tokens.push(c.tokens);
                vectors.push(c.vector.as_ref().clone());
            }
            if let Some(e) = &lookup {
                crate::metrics::record_request_energy(&model.name, e.joules);
            }
            (lookup, 0, Duration::ZERO, Duration::ZERO)
        }
    };
    if let Some(d) = state.drift() {
        for (tokens, vector) in input_tokens.iter().zip(&vectors) {
            d.observe(
                &model.name,
                crate::drift::Observation::Embedding {
                    tokens: *tokens,
                    vector: vector.clone(),
                },
            );
        }
    }
    Ok(Embedded {
        model,
        vectors,
        prompt_tokens,
        energy,
        batch_size,
        queue_time,
        compute_time,
        cache: state.cache().map(|_| CacheStatus::of(hits, texts.len())),
        cache_hits: hits,
    })
}

/// The model's embedding width, for protocols that describe their outputs before computing
/// them: 503 while loading, 404 for an unknown model, 400 for a generation model.
pub fn dimensions(state: &AppState, model_name: &str) -> Result<usize, ApiError> {
    find_model::<EmbeddingServing>(state, model_name).map(|(_, emb)| emb.dimensions)
}

/// Checks the texts of one request: at least one, at most `limits.max_inputs_per_request`,
/// none empty, none over `limits.max_input_bytes`.
pub fn check_texts(texts: &[String], names: InputNames, limits: &Limits) -> Result<(), ApiError> {
    let bad = |param: String, msg: String| {
        Err(ApiError::bad_request("invalid_input", msg).with_param(param))
    };
    let field = names.field;
    if texts.is_empty() {
        return bad(field.into(), format!("`{field}` must not be empty"));
    }
    let max_inputs = limits.max_inputs_per_request;
    if texts.len() > max_inputs {
        return bad(
            field.into(),
            format!(
                "`{field}` has {} items, more than the limit of {max_inputs} (limits.max_inputs_per_request)",
                texts.len()
            ),
        );
    }
    if let Some(i) = texts.iter().position(|t| t.is_empty()) {
        let param = names.of(i);
        return bad(
            param.clone(),
            format!("`{param}` is an empty string; inputs must not be empty"),
        );
    }
    let max_bytes = limits.max_input_bytes;
    if let Some(i) = texts.iter().position(|t| t.len() > max_bytes) {
        let param = names.of(i);
        return bad(
            param.clone(),
            format!(
                "`{param}` is {} bytes long, more than the limit of {max_bytes} (limits.max_input_bytes)",
                texts[i].len()
            ),
        );
    }
    Ok(())
}

async fn run(scheduler: &EmbeddingScheduler, ids: Vec<Vec<u32>>) -> Result<EmbedOutput, ApiError> {
    let rx = scheduler.submit(ids).map_err(ApiError::from)?;
    rx.await
        .map_err(|_| ApiError::internal("the compute thread stopped before answering"))?
        .map_err(ApiError::from)
}

/// Tokenizes `texts`, the request's texts at `places` (for errors naming them).
fn tokenize_all(
    tokenizer: &EmbeddingTokenizer,
    texts: &[String],
    truncate: bool,
    names: InputNames,
    places: &[usize],
) -> Result<Vec<Vec<u32>>, ApiError> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            tokenizer.encode(t, truncate).map_err(|e| {
                let param = names.of(places.get(i).copied().unwrap_or(i));
                match e {
                    TokenizeError::TooLong { tokens, max } => ApiError::bad_request(
                        "context_length_exceeded",
                        format!(
                            "`{param}` has {tokens} tokens, more than this model's limit of {max} tokens; \
                             shorten it or ask for truncation (\"truncate\": true)"
                        ),
                    )
                    .with_param(param),
                    TokenizeError::Failed(m) => ApiError::bad_request(
                        "invalid_input",
                        format!("`{param}` could not be tokenized: {m}"),
                    )
                    .with_param(param),
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn texts_are_checked_and_named_as_the_protocol_names_them() {
        let limits = Limits {
            max_inputs_per_request: 2,
            max_input_bytes: 4,
            ..Default::default()
        };
        let names = |field, count| InputNames { field, count };
        assert!(check_texts(&texts(&["a", "b"]), names("input", 2), &limits).is_ok());
        let e = check_texts(&[], names("text", 0), &limits).unwrap_err();
        assert_eq!((e.status.as_u16(), e.param.as_deref()), (400, Some("text")));
        let e = check_texts(&texts(&["a", "b", "c"]), names("input", 3), &limits).unwrap_err();
        assert!(e.message.contains("limit of 2"), "{}", e.message);
        let e = check_texts(&texts(&["a", ""]), names("text", 2), &limits).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("text[1]"));
        let e = check_texts(&texts(&["abcde"]), names("input", 1), &limits).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input"));
        assert!(e.message.contains("5 bytes long"), "{}", e.message);
    }
}
