//! Benchmark inputs: a JSONL file, or a built-in generator with a realistic length mix.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Writes `inputs` one JSON string per line (what [`from_jsonl`] reads back). Errors name the
/// file.
pub fn to_jsonl(inputs: &[String], path: &Path) -> Result<(), String> {
    let mut text = String::new();
    for input in inputs {
        text.push_str(&serde_json::Value::String(input.clone()).to_string());
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Reads one input per line: a JSON string, or an object with `text` or `input` (a string).
/// Blank lines are skipped. Errors name the file and line.
pub fn from_jsonl(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        let s = match &v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => o
                .get("text")
                .or_else(|| o.get("input"))
                .and_then(|t| t.as_str())
                .map(str::to_string),
            _ => None,
        };
        match s {
            Some(s) if !s.is_empty() => out.push(s),
            _ => {
                return Err(format!(
                    "{}:{}: expected a non-empty string or an object with a `text` string",
                    path.display(),
                    n + 1
                ))
            }
        }
    }
    if out.is_empty() {
        return Err(format!("{}: no inputs", path.display()));
    }
    Ok(out)
}

const WORDS: &[&str] = &[
    "energy",
    "request",
    "model",
    "server",
    "batch",
    "latency",
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "for",
    "with",
    "on",
    "that",
    "by",
    "this",
    "we",
    "inference",
    "measured",
    "joules",
    "carbon",
    "cost",
    "quantization",
    "precision",
    "throughput",
    "queue",
    "token",
    "sentence",
    "embedding",
    "vector",
    "search",
    "query",
    "document",
    "product",
    "customer",
    "support",
    "price",
    "weather",
    "city",
    "data",
    "training",
    "production",
    "kubernetes",
    "replica",
    "memory",
    "cache",
    "network",
    "fast",
    "slow",
    "small",
    "large",
    "green",
    "efficient",
    "reliable",
    "accurate",
    "user",
    "service",
];

/// `n` deterministic English-like sentences whose lengths follow a realistic mix for embedding
/// traffic: 60% short (4–12 words), 30% medium (13–30), 10% long (31–60), i.e. roughly 7–80 tokens.
pub fn generate(n: usize, seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let bucket: f64 = rng.random();
            let words = if bucket < 0.6 {
                rng.random_range(4..=12)
            } else if bucket < 0.9 {
                rng.random_range(13..=30)
            } else {
                rng.random_range(31..=60)
            };
            let mut s: Vec<&str> = (0..words)
                .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                .collect();
            let first = s[0].to_string();
            let mut cap = first[..1].to_uppercase();
            cap.push_str(&first[1..]);
            s[0] = "";
            format!("{cap}{}.", s.join(" "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_inputs_read_back_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inputs.jsonl");
        let mut inputs = generate(20, 3);
        inputs.push("quotes \" and\nnewlines, ünïcode".into());
        to_jsonl(&inputs, &path).unwrap();
        assert_eq!(from_jsonl(&path).unwrap(), inputs);
        let err = to_jsonl(&inputs, &dir.path().join("missing/x.jsonl")).unwrap_err();
        assert!(err.contains("missing/x.jsonl"), "{err}");
    }

    #[test]
    fn generator_is_deterministic_and_mixed() {
        let a = generate(500, 7);
        assert_eq!(a, generate(500, 7));
        let lens: Vec<usize> = a.iter().map(|s| s.split(' ').count()).collect();
        assert!(lens.iter().any(|&l| l <= 12) && lens.iter().any(|&l| l > 30));
        assert!(a.iter().all(|s| s.ends_with('.') && !s.starts_with(' ')));
    }

    #[test]
    fn jsonl_accepts_strings_and_objects_and_names_bad_lines() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            f.path(),
            "\"one\"\n\n{\"text\": \"two\"}\n{\"input\": \"three\"}\n",
        )
        .unwrap();
        assert_eq!(from_jsonl(f.path()).unwrap(), vec!["one", "two", "three"]);
        std::fs::write(f.path(), "\"one\"\n42\n").unwrap();
        assert!(from_jsonl(f.path()).unwrap_err().contains(":2:"));
    }
}
