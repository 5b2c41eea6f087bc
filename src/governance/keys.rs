//! API keys: a list of `name sha256-of-key` entries, from a file or an environment variable.
//!
//! The file holds digests, so it can be read by operators and kept in configuration systems
//! without exposing a secret: compute an entry with `printf %s "$KEY" | sha256sum`. A presented
//! key is hashed and compared with every digest in constant time, so neither the match nor its
//! position leaks through timing.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The tenant a request was admitted for: the name of the key it presented.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tenant(pub String);

/// The project a request is charged to: named by `x-wattserve-project` among its key's
/// projects, else the key's default project (`default`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Project(pub String);

/// What a key grants: its tenant, the projects it may charge (a bounded set, from the keys
/// file, never from requests), its default project, and whether it may read every tenant's
/// usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The key's name.
    pub tenant: Tenant,
    /// Projects it may name besides its default one.
    pub projects: Vec<String>,
    /// The project of requests that name none.
    pub default_project: String,
    /// May read every tenant's usage.
    pub admin: bool,
}

impl Grant {
    /// The grant of requests without a key (keys off): tenant `anonymous`, project `default`.
    pub fn anonymous() -> Self {
        Self {
            tenant: Tenant::anonymous(),
            projects: Vec::new(),
            default_project: DEFAULT_PROJECT.into(),
            admin: false,
        }
    }

    /// The project a request naming `asked` (or none) is charged to, if this key may.
    pub fn project(&self, asked: Option<&str>) -> Option<Project> {
        match asked {
            None => Some(Project(self.default_project.clone())),
            Some(p) if p == self.default_project || self.projects.iter().any(|q| q == p) => {
                Some(Project(p.to_string()))
            }
            Some(_) => None,
        }
    }

    /// Every project this key may name, the default first.
    pub fn all_projects(&self) -> Vec<&str> {
        std::iter::once(self.default_project.as_str())
            .chain(
                self.projects
                    .iter()
                    .map(String::as_str)
                    .filter(|p| *p != self.default_project),
            )
            .collect()
    }
}

/// The project of requests that name none, for keys that set no default.
pub const DEFAULT_PROJECT: &str = "default";

impl Tenant {
    /// The tenant of requests served without keys (authentication off).
    pub fn anonymous() -> Self {
        Tenant("anonymous".into())
    }
}

/// Why the key list cannot be used (a start-up error, exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The keys file could not be read.
    #[error("cannot read the API keys file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An entry is malformed.
    #[error("{origin}:{line}: {message} (expected `NAME SHA256-HEX [project=P]... [default-project=P] [admin]`, e.g. `team-a 5e884898...`)")]
    Entry {
        /// The file, or `WATTSERVE_API_KEYS`.
        origin: String,
        /// 1-based line (or entry) number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// No entry at all: authentication would lock everyone out.
    #[error("{0} holds no API key")]
    Empty(String),
}

/// The accepted keys, as digests with the tenant each names.
#[derive(Clone)]
pub struct ApiKeys {
    entries: Vec<([u8; 32], Grant)>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("tenants", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl ApiKeys {
    /// Reads the keys file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, KeysError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeysError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&path.display().to_string(), text.lines())
    }

    /// Parses entries separated by commas or newlines (the `WATTSERVE_API_KEYS` form).
    pub fn from_env_value(value: &str) -> Result<Self, KeysError> {
        Self::parse("WATTSERVE_API_KEYS", value.split([',', '\n']))
    }

    /// Parses `NAME SHA256-HEX` entries; blank entries and `#` comments are skipped.
    fn parse<'a>(origin: &str, lines: impl Iterator<Item = &'a str>) -> Result<Self, KeysError> {
        let mut entries: Vec<([u8; 32], Grant)> = Vec::new();
        for (i, raw) in lines.enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bad = |message: String| KeysError::Entry {
                origin: origin.to_string(),
                line: i + 1,
                message,
            };
            let mut fields = line.split_whitespace();
            let (Some(name), Some(hex)) = (fields.next(), fields.next()) else {
                return Err(bad("an entry is a name and a digest".into()));
            };
            if !valid_name(name) {
                return Err(bad(format!(
                    "the name `{name}` may hold only letters, digits, `-`, `_` and `.`"
                )));
            }
            let digest = parse_digest(hex).ok_or_else(|| {
                bad("the digest must be 64 hexadecimal digits (SHA-256 of the key)".into())
            })?;
            if entries.iter().any(|(d, _)| *d == digest) {
                return Err(bad("the same key is listed twice".into()));
            }
            let mut grant = Grant {
                tenant: Tenant(name.to_string()),
                projects: Vec::new(),
                default_project: DEFAULT_PROJECT.into(),
                admin: false,
            };
            for option in fields {
                match option.split_once('=') {
                    Some(("project", p)) => {
                        if !valid_name(p) {
                            return Err(bad(format!(
                                "the project `{p}` may hold only letters, digits, `-`, `_` and `.`"
                            )));
                        }
                        if !grant.projects.iter().any(|q| q == p) {
                            grant.projects.push(p.to_string());
                        }
                    }
                    Some(("default-project", p)) if valid_name(p) => {
                        grant.default_project = p.to_string();
                    }
                    None if option == "admin" => grant.admin = true,
                    _ => {
                        return Err(bad(format!(
                            "unknown option `{option}`; after the digest come `project=NAME` (repeatable), `default-project=NAME` and `admin`"
                        )))
                    }
                }
            }
            entries.push((digest, grant));
        }
        if entries.is_empty() {
            return Err(KeysError::Empty(origin.to_string()));
        }
        Ok(Self { entries })
    }

    /// The tenant of `key`, if it is one of the accepted keys. Every digest is compared, in
    /// constant time, whatever matches.
    pub fn verify(&self, key: &str) -> Option<Grant> {
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for (digest, grant) in &self.entries {
            if constant_time_eq(digest, &presented) {
                found = Some(grant.clone());
            }
        }
        found
    }

    /// Every (tenant, project) pair the keys allow: the bounded set metric labels come from.
    pub fn charges(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (_, g) in &self.entries {
            for p in g.all_projects() {
                out.push((g.tenant.0.clone(), p.to_string()));
            }
        }
        out
    }

    /// How many keys are accepted.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Never true: an empty list is refused at load.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Letters, digits, `-`, `_` and `.`: what names of tenants and projects may hold.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Equality of two digests without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// 64 hex digits as 32 bytes.
fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(key: &str) -> String {
        Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn keys_verify_to_their_tenant_and_nothing_else() {
        let text = format!(
            "# team keys\nteam-a {}\n\nteam-b {}  # the batch jobs\n",
            sha256_hex("sk-alpha"),
            sha256_hex("sk-beta")
        );
        let keys = ApiKeys::parse("keys.txt", text.lines()).unwrap();
        assert_eq!(keys.len(), 2);
        let tenant = |k: &str| keys.verify(k).map(|g| g.tenant);
        assert_eq!(tenant("sk-alpha"), Some(Tenant("team-a".into())));
        assert_eq!(tenant("sk-beta"), Some(Tenant("team-b".into())));
        assert_eq!(keys.verify("sk-alph"), None);
        assert_eq!(keys.verify(""), None);
        // The digest itself is not a key.
        assert_eq!(keys.verify(&sha256_hex("sk-alpha")), None);
    }

    #[test]
    fn the_env_form_takes_commas() {
        let value = format!("a {},b {}", sha256_hex("k1"), sha256_hex("k2"));
        let keys = ApiKeys::from_env_value(&value).unwrap();
        assert_eq!(
            keys.verify("k2").map(|g| g.tenant),
            Some(Tenant("b".into()))
        );
    }

    #[test]
    fn malformed_entries_name_their_line() {
        let cases = [
            ("a\n", "a name and a digest"),
            ("a 1234\n", "64 hexadecimal"),
            (
                "a/b 0000000000000000000000000000000000000000000000000000000000000000\n",
                "may hold only",
            ),
            ("# nothing\n", "holds no API key"),
            (
                "a 0000000000000000000000000000000000000000000000000000000000000000 team\n",
                "unknown option `team`",
            ),
            (
                "a 0000000000000000000000000000000000000000000000000000000000000000 project=x/y\n",
                "the project `x/y`",
            ),
        ];
        for (text, want) in cases {
            let e = ApiKeys::parse("keys.txt", text.lines())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let twice = format!("a {h}\nb {h}\n", h = sha256_hex("x"));
        let e = ApiKeys::parse("keys.txt", twice.lines())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("keys.txt:2:") && e.contains("twice"), "{e}");
    }

    #[test]
    fn keys_grant_projects_a_default_and_admin() {
        let text = format!(
            "team-a {} project=search project=chat default-project=search\nops {} admin\n",
            sha256_hex("ka"),
            sha256_hex("ko")
        );
        let keys = ApiKeys::parse("keys.txt", text.lines()).unwrap();
        let a = keys.verify("ka").unwrap();
        assert_eq!(a.default_project, "search");
        assert_eq!(a.project(None), Some(Project("search".into())));
        assert_eq!(a.project(Some("chat")), Some(Project("chat".into())));
        assert_eq!(a.project(Some("billing")), None);
        assert!(!a.admin);
        let ops = keys.verify("ko").unwrap();
        assert!(ops.admin);
        assert_eq!(ops.project(None), Some(Project("default".into())));
        assert_eq!(ops.project(Some("chat")), None);
        assert_eq!(
            keys.charges(),
            [
                ("team-a".to_string(), "search".to_string()),
                ("team-a".into(), "chat".into()),
                ("ops".into(), "default".into())
            ]
        );
        assert_eq!(Grant::anonymous().project(Some("x")), None);
    }

    #[test]
    fn digests_compare_equal_only_when_equal() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(constant_time_eq(&a, &b));
        b[31] ^= 1;
        assert!(!constant_time_eq(&a, &b));
    }
}
