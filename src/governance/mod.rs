//! Who spends what: API keys and the tenants they name, and the usage ledger that records what
//! each request cost.
//!
//! A key's name is its tenant: the API attaches it to every request it admits, so that usage
//! can be accounted per tenant. The key store holds SHA-256 digests only, never a key itself.

pub mod budgets;
pub mod keys;
pub mod ledger;
pub mod rollup;
pub mod sqlite_store;

pub use keys::{ApiKeys, Grant, KeysError, Project, Tenant};
