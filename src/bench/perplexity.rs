//! `wattserve bench --perplexity FILE`: how much a precision costs in quality, beside what it
//! costs in time and joules, measured through the server on the same text.
//!
//! The text is tokenized by the server (`POST /tokenize`, the model's own tokenizer) and cut
//! into chunks of `--context` tokens; each chunk is scored by one `/v1/completions` request (`echo`, `max_tokens: 0`,
//! `logprobs: 0`), and the second half of each chunk is scored, as llama.cpp's perplexity tool
//! does (its first token replaced by the beginning-of-sequence token when the model adds one;
//! from position `context / 2`, each token's log-probability given all before it), so that the
//! numbers are comparable with it. Perplexity is `exp(mean negative log-likelihood)`, its
//! standard error `ppl · sqrt(var(nll) / (n - 1))` (llama.cpp's estimate).

use std::time::Instant;

use serde::Serialize;

use super::BenchError;

/// Running sums of the negative log-likelihood of scored tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NllSums {
    /// Tokens scored.
    pub count: usize,
    /// Σ −ln p.
    pub nll: f64,
    /// Σ (ln p)².
    pub nll2: f64,
}

impl NllSums {
    /// Adds one token's log-probability.
    pub fn add(&mut self, logprob: f64) {
        self.count += 1;
        self.nll -= logprob;
        self.nll2 += logprob * logprob;
    }

    /// `exp(mean nll)`; NaN before any token.
    pub fn perplexity(&self) -> f64 {
        (self.nll / self.count as f64).exp()
    }

    /// The standard error of [`perplexity`](Self::perplexity) (0 under two tokens).
    pub fn stderr(&self) -> f64 {
        if self.count < 2 {
            return 0.0;
        }
        let n = self.count as f64;
        let mean = self.nll / n;
        let var = self.nll2 / n - mean * mean;
        if var <= 0.0 {
            return 0.0;
        }
        (var / (n - 1.0)).sqrt() * self.perplexity()
    }
}

/// The chunks of `context` tokens that `tokens` holds (a shorter rest is dropped), each starting
/// with `bos` instead of its own first token when given (llama.cpp's convention for models that
/// add one).
pub fn chunks(tokens: &[u32], context: usize, bos: Option<u32>) -> Vec<Vec<u32>> {
    tokens
        .chunks_exact(context.max(2))
        .map(|c| {
            let mut c = c.to_vec();
            if let Some(b) = bos {
                c[0] = b;
            }
            c
        })
        .collect()
}

/// Adds the scored half of one chunk: `logprobs[j]` is the log-probability of token `j` given
/// tokens `..j` (`None` for token 0); tokens `context / 2 + 1 ..` are scored.
pub fn add_chunk(sums: &mut NllSums, logprobs: &[Option<f64>]) {
    let first = logprobs.len() / 2 + 1;
    for lp in logprobs.iter().skip(first).flatten() {
        sums.add(*lp);
    }
}

/// One model's perplexity on the text, with what scoring it cost.
#[derive(Debug, Clone, Serialize)]
pub struct PerplexityReport {
    /// Model name.
    pub model: String,
    /// Its precision.
    pub precision: String,
    /// Tokens per chunk.
    pub context: usize,
    /// Chunks scored.
    pub chunks: usize,
    /// Tokens scored (the second half of every chunk).
    pub scored_tokens: usize,
    /// `exp(mean nll)`.
    pub perplexity: f64,
    /// Its standard error.
    pub stderr: f64,
    /// Scored tokens per wall-clock second (every chunk's whole context is computed).
    pub scored_tokens_per_s: f64,
    /// Joules per 1,000 scored tokens, as the server metered the requests.
    pub joules_per_1k_scored: Option<f64>,
    /// How the energy was measured.
    pub energy_source: Option<String>,
}

/// Bytes of text per `/tokenize` request (under the default `limits.max_input_bytes`).
const TOKENIZE_PIECE: usize = 32 * 1024;

/// `text` cut into pieces of about `max` bytes (the last cut at most `max` bytes in, else the
/// first after it), each cut right after a lone newline between two non-space characters:
/// byte-level BPE's pre-tokenizer makes that newline a token of its own whether or not the text
/// ends after it, so the pieces tokenize to exactly the tokens of the whole (a text without such
/// newlines stays whole).
pub fn pieces(text: &str, max: usize) -> Vec<&str> {
    let cuts = |rest: &str| -> Vec<usize> {
        let chars: Vec<(usize, char)> = rest.char_indices().collect();
        chars
            .windows(3)
            .filter(|w| !w[0].1.is_whitespace() && w[1].1 == '\n' && !w[2].1.is_whitespace())
            .map(|w| w[2].0)
            .collect()
    };
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let all = cuts(rest);
        let cut = all
            .iter()
            .copied()
            .rfind(|&i| i <= max)
            .or_else(|| all.first().copied());
        let Some(cut) = cut else {
            break;
        };
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out.push(rest);
    out
}

/// `text` as `model`'s tokenizer at `base` tokenizes a prompt, and its beginning-of-sequence
/// id when the model adds one (then the first token).
pub async fn tokenize(
    client: &reqwest::Client,
    base: &str,
    model: &str,
    text: &str,
) -> Result<(Vec<u32>, Option<u32>), BenchError> {
    let fail = |e: String| BenchError::Target(format!("perplexity, {model}: {e}"));
    let info = json_of(
        client
            .get(format!("{base}/tokenizer_info"))
            .query(&[("model", model)]),
    )
    .await
    .map_err(|e| fail(format!("/tokenizer_info: {e}")))?;
    let mut tokens: Vec<u32> = Vec::new();
    for (i, piece) in pieces(text, TOKENIZE_PIECE).into_iter().enumerate() {
        let v = json_of(client.post(format!("{base}/tokenize")).json(
            &serde_json::json!({"model": model, "prompt": piece, "add_special_tokens": i == 0}),
        ))
        .await
        .map_err(|e| fail(format!("/tokenize: {e}")))?;
        let ids: Vec<u32> = serde_json::from_value(v["tokens"].clone())
            .map_err(|e| fail(format!("/tokenize: {e}")))?;
        tokens.extend(ids);
    }
    let bos = match info["add_bos_token"].as_bool() {
        Some(true) => tokens.first().copied(),
        _ => None,
    };
    Ok((tokens, bos))
}

/// Sends `request` and reads its JSON answer; a failed request, or an error status with the
/// server's message, as text.
async fn json_of(request: reqwest::RequestBuilder) -> Result<serde_json::Value, String> {
    let resp = request.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(v)
    } else {
        Err(format!("{status}: {}", v["error"]["message"]))
    }
}

/// The precision `base` serves `model` at, from its model card.
pub async fn precision_of(client: &reqwest::Client, base: &str, model: &str) -> String {
    let card = async {
        client
            .get(format!("{base}/v1/models/{model}"))
            .send()
            .await
            .ok()?
            .json::<serde_json::Value>()
            .await
            .ok()
    };
    card.await
        .and_then(|c| c["precision"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Scores `chunks` with `model` at `base`, one request at a time.
pub async fn measure(
    client: &reqwest::Client,
    base: &str,
    model: &str,
    precision: &str,
    chunks: &[Vec<u32>],
) -> Result<PerplexityReport, BenchError> {
    let mut sums = NllSums::default();
    let mut joules = Some(0.0);
    let mut source = None;
    let started = Instant::now();
    for (i, chunk) in chunks.iter().enumerate() {
        let fail = |e: String| BenchError::Target(format!("perplexity, {model}, chunk {i}: {e}"));
        let v = json_of(client.post(format!("{base}/v1/completions")).json(
            &serde_json::json!({"model": model, "prompt": chunk, "max_tokens": 0,
                                "echo": true, "logprobs": 0}),
        ))
        .await
        .map_err(fail)?;
        let logprobs: Vec<Option<f64>> = v["choices"][0]["logprobs"]["token_logprobs"]
            .as_array()
            .ok_or_else(|| fail("no token_logprobs in the response".into()))?
            .iter()
            .map(serde_json::Value::as_f64)
            .collect();
        if logprobs.len() != chunk.len() {
            return Err(fail(format!(
                "{} token_logprobs for {} tokens",
                logprobs.len(),
                chunk.len()
            )));
        }
        add_chunk(&mut sums, &logprobs);
        let energy = &v["usage"]["energy"];
        joules = match (joules, energy["joules"].as_f64()) {
            (Some(sum), Some(j)) => Some(sum + j),
            _ => None,
        };
        source = energy["source"].as_str().map(str::to_string);
    }
    let seconds = started.elapsed().as_secs_f64();
    let scored = sums.count;
    Ok(PerplexityReport {
        model: model.to_string(),
        precision: precision.to_string(),
        context: chunks.first().map_or(0, Vec::len),
        chunks: chunks.len(),
        scored_tokens: scored,
        perplexity: sums.perplexity(),
        stderr: sums.stderr(),
        scored_tokens_per_s: scored as f64 / seconds.max(1e-9),
        joules_per_1k_scored: joules
            .filter(|_| scored > 0)
            .map(|j| j * 1000.0 / scored as f64),
        energy_source: source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_half_of_each_chunk_is_scored_as_llama_cpp_does() {
        // 8 tokens: positions 5, 6, 7 are scored (llama.cpp: logits 4..6 predict tokens 5..7).
        let lps: Vec<Option<f64>> = std::iter::once(None)
            .chain((1..8).map(|j| Some(-(j as f64))))
            .collect();
        let mut s = NllSums::default();
        add_chunk(&mut s, &lps);
        assert_eq!(s.count, 3);
        assert_eq!(s.nll, 5.0 + 6.0 + 7.0);
        assert!((s.perplexity() - 6f64.exp()).abs() < 1e-9);
        // var of {5, 6, 7} = 2/3; se = ppl · sqrt(var / 2).
        let want = 6f64.exp() * (2.0f64 / 3.0 / 2.0).sqrt();
        assert!((s.stderr() - want).abs() < 1e-9 * want);
    }

    #[test]
    fn pieces_are_cut_after_a_newline_before_text() {
        let text = "ab\n cd\nef\n\ngh\nij";
        assert_eq!(pieces(text, 100), vec![text]);
        assert_eq!(pieces(text, 8), vec!["ab\n cd\n", "ef\n\ngh\n", "ij"]);
        assert_eq!(pieces(text, 11), vec!["ab\n cd\n", "ef\n\ngh\nij"]);
        assert_eq!(pieces(text, 2), vec!["ab\n cd\n", "ef\n\ngh\n", "ij"]);
        assert_eq!(pieces("abcdef", 2), vec!["abcdef"]);
        assert_eq!(pieces(text, 11).concat(), text);
    }

    #[test]
    fn chunks_drop_the_rest_and_start_with_bos_when_the_model_adds_one() {
        let t: Vec<u32> = (10..21).collect();
        assert_eq!(
            chunks(&t, 4, None),
            vec![vec![10, 11, 12, 13], vec![14, 15, 16, 17]]
        );
        assert_eq!(chunks(&t, 4, Some(1))[1], vec![1, 15, 16, 17]);
        assert!(chunks(&t, 12, None).is_empty());
    }
}
