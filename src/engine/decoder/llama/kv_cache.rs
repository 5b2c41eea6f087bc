//! Per-sequence key/value caches: what a sequence keeps between decoder steps.

use super::config::LlamaConfig;

/// The keys and values one sequence has produced so far, per layer, after RoPE. Owned by the
/// sequence, so sequences of any lengths share a forward pass.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Per layer: keys, then values, each `len × kv_dim` floats.
    pub(super) layers: Vec<(Vec<f32>, Vec<f32>)>,
    pub(super) len: usize,
    kv_dim: usize,
}

impl KvCache {
    /// An empty cache for a model of shape `cfg`, with room for `capacity` tokens reserved.
    pub fn new(cfg: &LlamaConfig, capacity: usize) -> Self {
        let floats = capacity.min(cfg.context_len) * cfg.kv_dim();
        Self {
            layers: (0..cfg.n_layer)
                .map(|_| (Vec::with_capacity(floats), Vec::with_capacity(floats)))
                .collect(),
            len: 0,
            kv_dim: cfg.kv_dim(),
        }
    }

    /// Tokens cached (the position the next token gets).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets the tokens past the first `len` (keeping the room reserved), so that a sequence
    /// can be rewound: a benchmark repeating one step, or a step to be retried.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        for (k, v) in &mut self.layers {
            k.truncate(len * self.kv_dim);
            v.truncate(len * self.kv_dim);
        }
        self.len = len;
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> usize {
        self.layers.len() * 2 * self.len * self.kv_dim * std::mem::size_of::<f32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::config::tests_support::tiny_config as cfg;

    #[test]
    fn a_truncated_cache_forgets_the_tail_and_keeps_its_room() {
        let c = cfg();
        let mut cache = KvCache::new(&c, 8);
        for (k, v) in &mut cache.layers {
            k.extend_from_slice(&[1.0; 3 * 4]);
            v.extend_from_slice(&[2.0; 3 * 4]);
        }
        cache.len = 3;
        let room = cache.layers[0].0.capacity();
        cache.truncate(5);
        assert_eq!(cache.len(), 3, "truncating past the end keeps everything");
        cache.truncate(1);
        assert_eq!((cache.len(), cache.bytes()), (1, 2 * 4 * 4));
        assert_eq!(cache.layers[0].0, vec![1.0; 4]);
        assert_eq!(cache.layers[0].0.capacity(), room);
    }
}
