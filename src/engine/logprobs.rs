//! Log-probabilities of tokens under the model's distribution: what `logprobs` in the OpenAI API
//! returns and what perplexity is computed from.
//!
//! The distribution is the log-softmax of the raw logits, before temperature, top-k or top-p:
//! the model's own probabilities, whatever the sampler then does with them (OpenAI's and vLLM's
//! convention, and what evaluation tools expect). One row costs one pass for the maximum, one
//! for the normalizer (accumulated in f64) and one for the `top` alternatives, kept in a small
//! sorted buffer rather than by sorting the vocabulary.

/// Most alternatives per token the API offers (chat's `top_logprobs` limit).
pub const MAX_TOP: usize = 20;

/// One token's log-probability and its most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token (sampled, or the prompt's).
    pub token: u32,
    /// `ln p(token)` under the model's distribution.
    pub logprob: f32,
    /// The most likely tokens with their log-probabilities, most likely first (ties: lower id
    /// first); as many as asked for.
    pub top: Vec<(u32, f32)>,
}

/// The log-normalizer of a logits row: `ln Σ exp(l)`, computed as `max + ln Σ exp(l - max)`
/// with the sum in f64.
pub fn log_normalizer(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = row.iter().map(|&l| f64::from(l - max).exp()).sum();
    (f64::from(max) + sum.ln()) as f32
}

/// `token`'s log-probability under `row`, with the `top` most likely tokens (at most
/// [`MAX_TOP`]).
pub fn score(row: &[f32], token: u32, top: usize) -> TokenLogprob {
    let z = log_normalizer(row);
    let logprob = row
        .get(token as usize)
        .map_or(f32::NEG_INFINITY, |&l| l - z);
    TokenLogprob {
        token,
        logprob,
        top: top_tokens(row, top.min(MAX_TOP))
            .into_iter()
            .map(|(id, l)| (id, l - z))
            .collect(),
    }
}

/// The `n` largest logits of `row` with their ids, largest first, lower id first on ties; NaN
/// logits are never chosen.
pub fn top_tokens(row: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    if n == 0 {
        return best;
    }
    for (id, &l) in row.iter().enumerate() {
        if l.is_nan() || (best.len() == n && l <= best[n - 1].1) {
            continue;
        }
        // Insert after every kept logit that is at least as large: ties keep the lower id first.
        let at = best.partition_point(|&(_, b)| b >= l);
        best.insert(at, (id as u32, l));
        best.truncate(n);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference_log_softmax(row: &[f32]) -> Vec<f64> {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z = max
            + row
                .iter()
                .map(|&l| (l as f64 - max).exp())
                .sum::<f64>()
                .ln();
        row.iter().map(|&l| l as f64 - z).collect()
    }

    #[test]
    fn the_log_probabilities_of_a_row_are_its_log_softmax() {
        let row = [2.0f32, -1.0, 0.5, 2.0, -30.0];
        let want = reference_log_softmax(&row);
        for (t, want) in want.iter().enumerate() {
            let got = score(&row, t as u32, 0);
            assert!((got.logprob as f64 - want).abs() < 1e-6, "{t}");
        }
        let sum: f64 = reference_log_softmax(&row).iter().map(|l| l.exp()).sum();
        assert!((sum - 1.0).abs() < 1e-9);
    }

    #[test]
    fn ties_keep_the_lower_id_first_and_nan_is_never_chosen() {
        let row = [1.0f32, f32::NAN, 3.0, 1.0, 3.0];
        let ids: Vec<u32> = top_tokens(&row, 4).iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![2, 4, 0, 3]);
        assert!(top_tokens(&row, 0).is_empty());
        assert_eq!(top_tokens(&row, 10).len(), 4);
    }

    #[test]
    fn a_token_outside_the_row_is_impossible() {
        assert_eq!(score(&[0.0, 1.0], 7, 1).logprob, f32::NEG_INFINITY);
    }

    proptest! {
        #[test]
        fn the_top_alternatives_are_the_largest_sorted_unique_and_sum_to_at_most_one(
            row in proptest::collection::vec(-20.0f32..20.0, 1..300),
            n in 0usize..25,
        ) {
            let s = score(&row, 0, n);
            let k = n.min(MAX_TOP).min(row.len());
            prop_assert_eq!(s.top.len(), k);
            // Sorted, descending, unique ids.
            for w in s.top.windows(2) {
                prop_assert!(w[0].1 >= w[1].1);
            }
            let mut ids: Vec<u32> = s.top.iter().map(|t| t.0).collect();
            ids.sort_unstable();
            ids.dedup();
            prop_assert_eq!(ids.len(), k);
            // The same set a full sort gives.
            let mut sorted: Vec<(u32, f32)> =
                row.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
            sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let want: Vec<u32> = sorted.iter().take(k).map(|t| t.0).collect();
            let got: Vec<u32> = s.top.iter().map(|t| t.0).collect();
            prop_assert_eq!(got, want);
            let p: f64 = s.top.iter().map(|t| (t.1 as f64).exp()).sum();
            prop_assert!(p <= 1.0 + 1e-5);
            let reference = reference_log_softmax(&row);
            prop_assert!((s.logprob as f64 - reference[0]).abs() < 1e-4);
        }
    }
}
