//! The emulated vault's state: secrets and their versions, faults, switches and counters.
//!
//! One [`Vault`] is shared (as `Arc<Vault>`) by the HTTP handlers and by tests that drive it
//! directly. Every method is synchronous and holds one std `Mutex` briefly; nothing awaits while
//! holding it. The direct methods do not validate names or sizes (tests may want odd content);
//! the admin endpoint and the seed loader do.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::fault::{self, Fault, FaultAction, RequestKind, Route};
use super::token::{Claims, KEY_LEN, TokenError, TokenSigner};

/// The audience Key Vault accepts in a bearer token.
pub const VAULT_AUDIENCE: &str = "https://vault.azure.net";

/// The emulator's tenant: named in the challenge, stamped on IMDS tokens, required by the vault.
pub const EMULATOR_TENANT_ID: &str = "00000000-0000-0000-0000-00000000e0e0";

/// Largest value Key Vault accepts (25 KB).
pub const MAX_VALUE_BYTES: usize = 25 * 1024;

/// Requests kept in the log; older ones are dropped first so a long benchmark stays bounded.
pub const REQUEST_LOG_CAPACITY: usize = 100_000;

/// Attributes of a new secret version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SecretOptions {
    pub content_type: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub enabled: bool,
    /// `exp`, unix seconds. Does not block a GET (as in Key Vault).
    pub expires: Option<i64>,
    /// `nbf`, unix seconds. Does not block a GET (as in Key Vault).
    pub not_before: Option<i64>,
    /// Backs a Key Vault certificate: answers carry `managed: true`, and a GET the `kid` of
    /// the certificate's key (see [`Vault::set_certificate`]).
    pub managed: bool,
}

impl Default for SecretOptions {
    fn default() -> Self {
        Self {
            content_type: None,
            tags: BTreeMap::new(),
            enabled: true,
            expires: None,
            not_before: None,
            managed: false,
        }
    }
}

/// A snapshot of the request counters.
///
/// `total` counts every request except admin ones, faulted or not. The per-kind counters count
/// requests that got past fault injection and the challenge (a data-plane request without a
/// valid token counts in `challenges` instead), including those then refused by RBAC or answered
/// 404/403. `faults_injected` counts requests a fault acted on (latency faults included).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    pub get_secret: u64,
    pub list_secrets: u64,
    pub list_versions: u64,
    pub challenges: u64,
    pub imds_tokens: u64,
    pub entra_tokens: u64,
    pub faults_injected: u64,
    pub total: u64,
    /// Lowercase secret name -> counted GETs.
    pub get_by_name: BTreeMap<String, u64>,
}

/// One logged request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub kind: RequestKind,
    pub method: String,
    pub path: String,
    /// The raw query string, without `?`; empty when there was none.
    pub query: String,
    /// Status sent; 0 when the connection was dropped or the request hangs.
    pub status: u16,
}

/// One version of a secret.
#[derive(Clone, Debug)]
pub(crate) struct Version {
    pub id: String,
    pub value: String,
    pub content_type: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub enabled: bool,
    pub created: i64,
    pub updated: i64,
    pub expires: Option<i64>,
    pub not_before: Option<i64>,
    pub managed: bool,
}

/// A secret: its name as first created, and its versions, oldest first.
#[derive(Clone, Debug)]
pub(crate) struct SecretEntry {
    pub name: String,
    pub versions: Vec<Version>,
}

/// A list item: the secret's name as created and one version's attributes.
#[derive(Clone, Debug)]
pub(crate) struct Item {
    pub name: String,
    pub version: Version,
}

/// Outcome of a GET on a secret.
pub(crate) enum Lookup {
    Found { name: String, version: Version },
    NotFound,
}

struct State {
    secrets: BTreeMap<String, SecretEntry>,
    faults: Vec<Fault>,
    identity_assigned: bool,
    rbac_allowed: bool,
    latency: Duration,
    empty_pages: u32,
    counters: Counters,
    requests: VecDeque<RequestRecord>,
}

/// The emulated vault, shared by the servers and the tests.
#[derive(Debug)]
pub struct Vault {
    state: Mutex<State>,
    signer: TokenSigner,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("secrets", &self.secrets.len())
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl Default for Vault {
    fn default() -> Self {
        Self::new()
    }
}

/// Current unix time in seconds.
pub(crate) fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Whether `name` is a valid Key Vault secret name: `^[0-9a-zA-Z-]{1,127}$`.
pub fn is_valid_secret_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn new_version_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Splits `len` items into a page of at most `max` starting at `start`: the page's range and
/// the start of the next page, if any items remain.
pub(crate) fn page_range(
    len: usize,
    start: usize,
    max: usize,
) -> (std::ops::Range<usize>, Option<usize>) {
    let start = start.min(len);
    let end = start.saturating_add(max).min(len);
    (start..end, (end < len).then_some(end))
}

impl Vault {
    /// An empty vault with a fresh token key; identity assigned, RBAC allowing, no latency,
    /// no empty list pages.
    pub fn new() -> Self {
        Self::with_token_key(&rand::random::<[u8; KEY_LEN]>())
    }

    /// As [`Vault::new`], signing tokens with `key` (kept in the state directory).
    pub fn with_token_key(key: &[u8; KEY_LEN]) -> Self {
        Self {
            state: Mutex::new(State {
                secrets: BTreeMap::new(),
                faults: Vec::new(),
                identity_assigned: true,
                rbac_allowed: true,
                latency: Duration::ZERO,
                empty_pages: 0,
                counters: Counters::default(),
                requests: VecDeque::new(),
            }),
            signer: TokenSigner::with_key(key),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a new enabled version of `name` holding `value`; returns its version id.
    pub fn set_secret(&self, name: &str, value: &str) -> String {
        self.set_secret_with(name, value, SecretOptions::default())
    }

    /// Adds a new version of `name` with the given attributes; returns its version id.
    pub fn set_secret_with(&self, name: &str, value: &str, opts: SecretOptions) -> String {
        let now = now_unix();
        let id = new_version_id();
        let version = Version {
            id: id.clone(),
            value: value.to_owned(),
            content_type: opts.content_type,
            tags: opts.tags,
            enabled: opts.enabled,
            created: now,
            updated: now,
            expires: opts.expires,
            not_before: opts.not_before,
            managed: opts.managed,
        };
        self.lock()
            .secrets
            .entry(name.to_ascii_lowercase())
            .or_insert_with(|| SecretEntry {
                name: name.to_owned(),
                versions: Vec::new(),
            })
            .versions
            .push(version);
        tracing::debug!(secret = name, version = %id, "emulator: secret set");
        id
    }

    /// Adds a new version of `name` as Key Vault keeps a certificate's secret: `value` is a
    /// base64 PFX (`content_type` `application/x-pkcs12`) or PEM text
    /// (`application/x-pem-file`), and the secret is managed (`managed: true`, a `kid`).
    /// Nothing checks that the value is what the content type says. Returns the version id.
    /// [`super::SampleChain`] makes values to put here.
    pub fn set_certificate(&self, name: &str, value: &str, content_type: &str) -> String {
        let opts = SecretOptions {
            content_type: Some(content_type.to_owned()),
            managed: true,
            ..SecretOptions::default()
        };
        self.set_secret_with(name, value, opts)
    }

    /// Sets `enabled` on the latest version of `name`; no-op when it does not exist.
    pub fn set_enabled(&self, name: &str, enabled: bool) {
        let mut state = self.lock();
        let latest = state
            .secrets
            .get_mut(&name.to_ascii_lowercase())
            .and_then(|s| s.versions.last_mut());
        if let Some(version) = latest {
            version.enabled = enabled;
            version.updated = now_unix();
        }
    }

    /// Removes `name` and all its versions (no soft delete); false when it did not exist.
    pub fn delete_secret(&self, name: &str) -> bool {
        self.lock()
            .secrets
            .remove(&name.to_ascii_lowercase())
            .is_some()
    }

    /// The id of the latest version of `name`.
    pub fn latest_version(&self, name: &str) -> Option<String> {
        let state = self.lock();
        let entry = state.secrets.get(&name.to_ascii_lowercase())?;
        entry.versions.last().map(|v| v.id.clone())
    }

    /// Adds a fault; faults are tried in the order added.
    pub fn add_fault(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// `false`: IMDS answers 400 "Identity not found", as Azure does without an identity.
    pub fn set_identity_assigned(&self, assigned: bool) {
        self.lock().identity_assigned = assigned;
    }

    /// `false`: every authenticated Key Vault request answers 403 `ForbiddenByRbac`.
    pub fn set_rbac_allowed(&self, allowed: bool) {
        self.lock().rbac_allowed = allowed;
    }

    /// Delay added to every Key Vault data-plane response (challenges included).
    pub fn set_service_latency(&self, d: Duration) {
        self.lock().latency = d;
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.lock().counters.clone()
    }

    /// Zeroes the counters and empties the request log.
    pub fn reset_counters(&self) {
        let mut state = self.lock();
        state.counters = Counters::default();
        state.requests.clear();
    }

    /// The request log, oldest first (at most [`REQUEST_LOG_CAPACITY`] entries).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().requests.iter().cloned().collect()
    }

    /// Lists answer `n` pages with `"value": []` and a `nextLink` before each page of items,
    /// and `n` empty pages after the last (the final one without `nextLink`), as the real
    /// service sometimes does. 0 (the default) turns this off.
    pub fn set_empty_pages(&self, n: u32) {
        self.lock().empty_pages = n;
    }

    pub(crate) fn empty_pages(&self) -> u32 {
        self.lock().empty_pages
    }

    /// A bearer token Key Vault accepts, issued to `identity` in the emulator's tenant.
    pub fn issue_token(&self, identity: &str) -> String {
        self.issue_token_for(identity, VAULT_AUDIENCE, EMULATOR_TENANT_ID)
    }

    /// A token issued to `identity` for `audience` by `tenant`, as Entra would sign it; Key
    /// Vault refuses it unless audience and tenant are its own.
    pub fn issue_token_for(&self, identity: &str, audience: &str, tenant: &str) -> String {
        self.signer
            .mint(&Claims::new(identity, audience, tenant, now_unix()))
    }

    pub(crate) fn verify_token(&self, token: &str) -> Result<Claims, TokenError> {
        self.signer.verify(token, now_unix())
    }

    pub(crate) fn identity_assigned(&self) -> bool {
        self.lock().identity_assigned
    }

    pub(crate) fn rbac_allowed(&self) -> bool {
        self.lock().rbac_allowed
    }

    pub(crate) fn service_latency(&self) -> Duration {
        self.lock().latency
    }

    /// Takes the fault for `route`, if any, counting it.
    pub(crate) fn take_fault(&self, route: &Route) -> Option<FaultAction> {
        let mut state = self.lock();
        let action = fault::take_fault(&mut state.faults, route)?;
        state.counters.faults_injected += 1;
        Some(action)
    }

    /// Applies `f` to the counters.
    pub(crate) fn count(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.lock().counters);
    }

    pub(crate) fn record(&self, record: RequestRecord) {
        let mut state = self.lock();
        if state.requests.len() >= REQUEST_LOG_CAPACITY {
            state.requests.pop_front();
        }
        state.requests.push_back(record);
    }

    /// The latest version of `name`, or the given version.
    pub(crate) fn lookup(&self, name: &str, version: Option<&str>) -> Lookup {
        let state = self.lock();
        let Some(entry) = state.secrets.get(&name.to_ascii_lowercase()) else {
            return Lookup::NotFound;
        };
        let found = match version {
            None => entry.versions.last(),
            Some(v) => entry.versions.iter().find(|x| x.id == v),
        };
        match found {
            Some(version) => Lookup::Found {
                name: entry.name.clone(),
                version: version.clone(),
            },
            None => Lookup::NotFound,
        }
    }

    /// One page of secrets (latest version's attributes) sorted by lowercase name, starting
    /// after `after` (a lowercase name); returns the page and the key to continue after.
    pub(crate) fn list_page(&self, after: Option<&str>, max: usize) -> (Vec<Item>, Option<String>) {
        let state = self.lock();
        let lower = match after {
            Some(key) => Bound::Excluded(key),
            None => Bound::Unbounded,
        };
        let mut rest = state
            .secrets
            .range::<str, _>((lower, Bound::Unbounded))
            .filter_map(|(key, entry)| {
                let version = entry.versions.last()?.clone();
                Some((
                    key.clone(),
                    Item {
                        name: entry.name.clone(),
                        version,
                    },
                ))
            });
        let mut page = Vec::new();
        let mut last_key = None;
        for (key, item) in rest.by_ref().take(max) {
            last_key = Some(key);
            page.push(item);
        }
        let next = if rest.next().is_some() {
            last_key
        } else {
            None
        };
        (page, next)
    }

    /// One page of `name`'s versions, oldest first, from index `start`; empty when the
    /// secret does not exist. Returns the page and the next start index.
    pub(crate) fn versions_page(
        &self,
        name: &str,
        start: usize,
        max: usize,
    ) -> (Vec<Item>, Option<usize>) {
        let state = self.lock();
        let Some(entry) = state.secrets.get(&name.to_ascii_lowercase()) else {
            return (Vec::new(), None);
        };
        let (range, next) = page_range(entry.versions.len(), start, max);
        let page = entry
            .versions
            .get(range)
            .unwrap_or_default()
            .iter()
            .map(|version| Item {
                name: entry.name.clone(),
                version: version.clone(),
            })
            .collect();
        (page, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names() {
        for good in ["a", "db-password", "A1-b2", &"x".repeat(127)] {
            assert!(is_valid_secret_name(good), "{good}");
        }
        for bad in ["", "a_b", ".git", "foo.swp", "é", "a b", &"x".repeat(128)] {
            assert!(!is_valid_secret_name(bad), "{bad}");
        }
    }

    #[test]
    fn page_range_math() {
        assert_eq!(page_range(60, 0, 25), (0..25, Some(25)));
        assert_eq!(page_range(60, 25, 25), (25..50, Some(50)));
        assert_eq!(page_range(60, 50, 25), (50..60, None));
        assert_eq!(page_range(50, 25, 25), (25..50, None));
        assert_eq!(page_range(0, 0, 25), (0..0, None));
        assert_eq!(page_range(3, 9, 25), (3..3, None));
    }

    #[test]
    fn list_pages_cover_all_names_once() {
        let vault = Vault::new();
        for i in 0..60 {
            vault.set_secret(&format!("S-{i:02}"), "v");
        }
        let mut names = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let (page, next) = vault.list_page(after.as_deref(), 25);
            pages += 1;
            names.extend(page.into_iter().map(|i| i.name));
            match next {
                Some(key) => after = Some(key),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        let want: Vec<String> = (0..60).map(|i| format!("S-{i:02}")).collect();
        assert_eq!(names, want);
        let (page, next) = vault.list_page(None, 60);
        assert_eq!((page.len(), next), (60, None));
    }

    #[test]
    fn names_are_case_insensitive_and_keep_first_case() {
        let vault = Vault::new();
        let v1 = vault.set_secret("Db-Password", "one");
        let v2 = vault.set_secret("db-password", "two");
        assert_ne!(v1, v2);
        assert_eq!(v1.len(), 32);
        assert!(
            v1.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        match vault.lookup("DB-PASSWORD", None) {
            Lookup::Found { name, version } => {
                assert_eq!(
                    (name.as_str(), version.value.as_str()),
                    ("Db-Password", "two")
                );
            }
            Lookup::NotFound => panic!("not found"),
        }
        assert!(matches!(
            vault.lookup("db-password", Some(&v1)),
            Lookup::Found { version, .. } if version.value == "one"
        ));
        let (versions, next) = vault.versions_page("DB-password", 0, 1);
        assert_eq!((versions.len(), next), (1, Some(1)));
        vault.set_enabled("DB-PASSWORD", false);
        assert!(matches!(
            vault.lookup("db-password", None),
            Lookup::Found { version, .. } if !version.enabled
        ));
        assert!(vault.delete_secret("DB-PASSWORD"));
        assert!(matches!(
            vault.lookup("db-password", None),
            Lookup::NotFound
        ));
        assert!(!vault.delete_secret("db-password"));
    }

    #[test]
    fn issued_tokens_verify() {
        let vault = Vault::new();
        let token = vault.issue_token("tests");
        let claims = vault.verify_token(&token);
        assert_eq!(
            claims
                .as_ref()
                .map(|c| (c.sub.as_str(), c.aud.as_str(), c.tid.as_str())),
            Ok(("tests", VAULT_AUDIENCE, EMULATOR_TENANT_ID))
        );
        assert!(Vault::new().verify_token(&token).is_err());
    }
}
