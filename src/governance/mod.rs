//! Who spends what: API keys and the tenants they name.
//!
//! A key's name is its tenant: the API attaches it to every request it admits, so that usage
//! can be accounted per tenant. The store holds SHA-256 digests only, never a key itself.

pub mod keys;

pub use keys::{ApiKeys, KeysError, Tenant};
