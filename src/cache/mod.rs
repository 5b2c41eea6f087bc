//! The response cache: exact-match answers that cost (almost) zero joules. Embeddings are cached
//! per input (model + precision + options + text → vector), completions whose result is
//! deterministic (temperature 0, or a given seed) per request (model + precision + endpoint +
//! every sampling option + prompt tokens → text). One LRU bounded in bytes (`cache.max_bytes`;
//! 0 turns it off) holds both; the least recently used entries go first.
//!
//! Tenancy: every key starts with its scope, the tenant's name, so one tenant's answers never
//! reach another, unless `cache.shared` makes the scope the same for all. The cache lives with
//! the process, and models are loaded once per process: a restart (new weights) starts empty.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// `[cache]`: the response cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Most bytes held (keys, values and bookkeeping); 0 turns the cache off. Default 64 MiB.
    pub max_bytes: u64,
    /// Share entries between tenants (a tenant can then tell, by a hit, that another sent the
    /// same input). Default false: each tenant has its own entries.
    pub shared: bool,
    /// Cache deterministic completions too (non-streamed; temperature 0 or a seed). Default true.
    pub completions: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            shared: false,
            completions: true,
        }
    }
}

/// What a request got from the cache: `x-cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Everything came from the cache.
    Hit,
    /// Some inputs came from the cache, the rest was computed.
    Partial,
    /// Everything was computed.
    Miss,
}

impl CacheStatus {
    /// The header's value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Partial => "partial",
            CacheStatus::Miss => "miss",
        }
    }

    /// The status of a request of `total` inputs of which `hits` came from the cache.
    pub fn of(hits: usize, total: usize) -> Self {
        if hits == 0 {
            CacheStatus::Miss
        } else if hits == total {
            CacheStatus::Hit
        } else {
            CacheStatus::Partial
        }
    }
}

/// A cached embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedEmbedding {
    /// The vector, as computed.
    pub vector: Arc<Vec<f32>>,
    /// Its input's tokens (what the request is counted for).
    pub tokens: usize,
}

/// A cached completion.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedCompletion {
    /// The generated text.
    pub text: Arc<str>,
    /// `stop` or `length`.
    pub finish_reason: &'static str,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
}

#[derive(Debug, Clone)]
enum Value {
    Embedding(CachedEmbedding),
    Completion(CachedCompletion),
}

impl Value {
    fn bytes(&self) -> usize {
        match self {
            Value::Embedding(e) => e.vector.len() * 4,
            Value::Completion(c) => c.text.len(),
        }
    }
}

/// Bookkeeping per entry beyond its key and value (map nodes, the recency index, the Arc).
const ENTRY_OVERHEAD: usize = 96;

struct Entry {
    value: Value,
    model: Arc<str>,
    tick: u64,
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Box<str>, Entry>,
    /// Recency: tick → key; the smallest tick is the least recently used.
    order: BTreeMap<u64, Box<str>>,
    tick: u64,
    bytes: usize,
}

/// The cache.
pub struct ResponseCache {
    inner: Mutex<Inner>,
    max_bytes: usize,
    shared: bool,
    completions: bool,
}

/// The key's scope for `tenant`.
fn scope(shared: bool, tenant: &str) -> &str {
    if shared {
        "*"
    } else {
        tenant
    }
}

impl ResponseCache {
    /// The cache `config` describes; `None` when it is off.
    pub fn new(config: &CacheConfig) -> Option<Self> {
        (config.max_bytes > 0).then(|| Self {
            inner: Mutex::new(Inner::default()),
            max_bytes: usize::try_from(config.max_bytes).unwrap_or(usize::MAX),
            shared: config.shared,
            completions: config.completions,
        })
    }

    /// Whether deterministic completions are cached.
    pub fn caches_completions(&self) -> bool {
        self.completions
    }

    /// The key of an embedding of `text` by `model` (`precision`) with `truncate`, for `tenant`.
    pub fn embedding_key(
        &self,
        tenant: &str,
        model: &str,
        precision: &str,
        truncate: bool,
        text: &str,
    ) -> String {
        format!(
            "e\u{1f}{}\u{1f}{model}\u{1f}{precision}\u{1f}{}\u{1f}{text}",
            scope(self.shared, tenant),
            u8::from(truncate)
        )
    }

    /// The key of a completion: `options` must name everything that shapes the result (endpoint,
    /// sampling, stop strings, length), `prompt` is the prompt's token ids.
    pub fn completion_key(
        &self,
        tenant: &str,
        model: &str,
        precision: &str,
        options: &str,
        prompt: &[u32],
    ) -> String {
        let mut key = format!(
            "c\u{1f}{}\u{1f}{model}\u{1f}{precision}\u{1f}{options}\u{1f}",
            scope(self.shared, tenant)
        );
        for id in prompt {
            key.push_str(&id.to_string());
            key.push(',');
        }
        key
    }

    fn get(&self, key: &str) -> Option<Value> {
        let mut inner = self.inner.lock().ok()?;
        inner.tick += 1;
        let tick = inner.tick;
        let Inner { map, order, .. } = &mut *inner;
        let entry = map.get_mut(key)?;
        if let Some(k) = order.remove(&entry.tick) {
            order.insert(tick, k);
        }
        entry.tick = tick;
        Some(entry.value.clone())
    }

    fn put(&self, key: String, model: &str, value: Value) {
        let bytes = key.len() + value.bytes() + ENTRY_OVERHEAD;
        if bytes > self.max_bytes {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.tick += 1;
        let tick = inner.tick;
        let key: Box<str> = key.into();
        if let Some(old) = inner.map.remove(&key) {
            inner.order.remove(&old.tick);
            inner.bytes -= old.bytes;
        }
        let mut evicted: HashMap<Arc<str>, u64> = HashMap::new();
        while inner.bytes + bytes > self.max_bytes {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            if let Some(gone) = inner.map.remove(&oldest) {
                inner.bytes -= gone.bytes;
                *evicted.entry(gone.model).or_default() += 1;
            }
        }
        inner.order.insert(tick, key.clone());
        inner.map.insert(
            key,
            Entry {
                value,
                model: Arc::from(model),
                tick,
                bytes,
            },
        );
        inner.bytes += bytes;
        let in_use = inner.bytes;
        drop(inner);
        crate::metrics::set_cache_bytes(in_use);
        for (model, n) in evicted {
            crate::metrics::record_cache_evictions(&model, n);
        }
    }

    /// The embedding under `key` (counted as a hit or a miss of `model`).
    pub fn get_embedding(&self, model: &str, key: &str) -> Option<CachedEmbedding> {
        let found = match self.get(key) {
            Some(Value::Embedding(e)) => Some(e),
            _ => None,
        };
        crate::metrics::record_cache_lookup(model, "embedding", found.is_some());
        found
    }

    /// Keeps an embedding.
    pub fn put_embedding(&self, model: &str, key: String, value: CachedEmbedding) {
        self.put(key, model, Value::Embedding(value));
    }

    /// The completion under `key` (counted as a hit or a miss of `model`).
    pub fn get_completion(&self, model: &str, key: &str) -> Option<CachedCompletion> {
        let found = match self.get(key) {
            Some(Value::Completion(c)) => Some(c),
            _ => None,
        };
        crate::metrics::record_cache_lookup(model, "completion", found.is_some());
        found
    }

    /// Keeps a completion.
    pub fn put_completion(&self, model: &str, key: String, value: CachedCompletion) {
        self.put(key, model, Value::Completion(value));
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.bytes)
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.map.len())
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max_bytes: u64, shared: bool) -> ResponseCache {
        ResponseCache::new(&CacheConfig {
            max_bytes,
            shared,
            completions: true,
        })
        .unwrap()
    }

    fn vector(n: usize, x: f32) -> CachedEmbedding {
        CachedEmbedding {
            vector: Arc::new(vec![x; n]),
            tokens: 3,
        }
    }

    #[test]
    fn the_least_recently_used_go_first_and_the_bound_holds() {
        let c = cache(3 * (400 + ENTRY_OVERHEAD + 40) as u64, false);
        let key = |t: &str| c.embedding_key("a", "m", "f32", false, t);
        for t in ["one", "two", "three"] {
            c.put_embedding("m", key(t), vector(100, 1.0));
        }
        assert_eq!(c.len(), 3);
        // Touch "one": "two" is now the least recently used.
        assert!(c.get_embedding("m", &key("one")).is_some());
        c.put_embedding("m", key("four"), vector(100, 2.0));
        assert!(c.get_embedding("m", &key("two")).is_none(), "evicted");
        assert!(c.get_embedding("m", &key("one")).is_some());
        assert!(c.bytes() <= 3 * (400 + ENTRY_OVERHEAD + 40));
        // A flood of distinct inputs never passes the bound.
        for i in 0..1000 {
            c.put_embedding("m", key(&format!("flood {i}")), vector(100, 0.0));
            assert!(c.bytes() <= c.max_bytes, "{} > {}", c.bytes(), c.max_bytes);
        }
        // An entry larger than the whole cache is not kept.
        c.put_embedding("m", key("huge"), vector(10_000, 0.0));
        assert!(c.get_embedding("m", &key("huge")).is_none());
    }

    #[test]
    fn tenants_are_apart_unless_shared() {
        let c = cache(1 << 20, false);
        let k = |tenant: &str, model: &str| c.embedding_key(tenant, model, "f32", false, "hello");
        c.put_embedding("m", k("a", "m"), vector(4, 1.0));
        assert!(
            c.get_embedding("m", &k("b", "m")).is_none(),
            "tenant b sees nothing of a"
        );
        assert_eq!(c.get_embedding("m", &k("a", "m")).unwrap().vector[0], 1.0);
        assert!(
            c.get_embedding("n", &k("a", "n")).is_none(),
            "nor another model"
        );
        let s = cache(1 << 20, true);
        let shared = |tenant: &str| s.embedding_key(tenant, "m", "f32", false, "hello");
        assert_eq!(shared("a"), shared("b"));
        // Options and precision are part of the key.
        assert_ne!(
            c.embedding_key("a", "m", "f32", false, "x"),
            c.embedding_key("a", "m", "f32", true, "x")
        );
        assert_ne!(
            c.completion_key("a", "m", "int8", "t=0", &[1, 23]),
            c.completion_key("a", "m", "int8", "t=0", &[12, 3])
        );
        assert_eq!(CacheStatus::of(0, 3), CacheStatus::Miss);
        assert_eq!(CacheStatus::of(2, 3), CacheStatus::Partial);
        assert_eq!(CacheStatus::of(3, 3).as_str(), "hit");
    }
}
