//! Request classification and fault injection.
//!
//! Every request the emulator receives is classified once, from its method and path, into a
//! [`Route`]: which [`RequestKind`] it is, which secret it names and which plane it belongs to
//! (Key Vault data plane, identity endpoints, admin). Counters, the request log and fault
//! matching all work from that one classification, so they can never disagree.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// `GET /secrets/{name}[/{version}]`.
    GetSecret,
    /// One page of `GET /secrets`.
    ListSecrets,
    /// One page of `GET /secrets/{name}/versions`.
    ListVersions,
    /// `GET /metadata/identity/oauth2/token[/]` on the IMDS port.
    ImdsToken,
    /// `POST /{tenant}/oauth2/v2.0/token` on the HTTPS port.
    EntraToken,
    /// Anything under `/_admin/`.
    Admin,
    /// Anything else (on the data plane: still challenged and counted in `total`).
    Other,
}

/// A fault to inject into matching requests, before authentication is looked at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// Which requests: `None` matches every Key Vault data-plane request (not IMDS, Entra or
    /// admin); `Some(kind)` matches that kind only (`Admin` never matches).
    #[serde(default)]
    pub kind: Option<RequestKind>,
    /// Only requests naming this secret (case-insensitive); requests naming no secret never
    /// match a fault with a name.
    #[serde(default)]
    pub name: Option<String>,
    /// What happens to a matching request.
    pub action: FaultAction,
    /// How many requests to affect; `None` = until cleared.
    #[serde(default)]
    pub times: Option<u32>,
}

/// What a fault does. JSON: `{"status":{"status":429,"retry_after":2}}`, `{"latency":250}`
/// (milliseconds), `"drop"`, `"hang"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultAction {
    /// Answer with this status and the plane's error body (`Retry-After` when given).
    Status {
        status: u16,
        #[serde(default)]
        retry_after: Option<u32>,
    },
    /// Delay the request, then handle it normally.
    Latency(#[serde(with = "millis")] Duration),
    /// Close the connection without an answer.
    Drop,
    /// Never answer (until the emulator shuts down).
    Hang,
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Which server and part of the API a request belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plane {
    /// Key Vault data plane: challenged, latency-delayed, RBAC-checked.
    Data,
    /// IMDS and Entra token endpoints (and Entra metadata).
    Identity,
    /// `/_admin/`: never counted, never faulted.
    Admin,
}

/// Which of the two listeners received a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// The HTTPS listener: Key Vault, Entra, admin.
    Vault,
    /// The plain-HTTP IMDS listener.
    Imds,
}

/// A classified request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub kind: RequestKind,
    pub plane: Plane,
    /// The secret named in the path, as sent.
    pub name: Option<String>,
}

/// Classifies a request from its server, method and path alone.
pub fn classify(server: Server, method: &str, path: &str) -> Route {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let route = |kind, plane, name: Option<&str>| Route {
        kind,
        plane,
        name: name.map(str::to_owned),
    };
    if server == Server::Imds {
        let kind = if path.strip_suffix('/').unwrap_or(path) == "/metadata/identity/oauth2/token" {
            RequestKind::ImdsToken
        } else {
            RequestKind::Other
        };
        return route(kind, Plane::Identity, None);
    }
    let get = method == "GET";
    match segments.as_slice() {
        ["_admin", ..] => route(RequestKind::Admin, Plane::Admin, None),
        [_, "oauth2", "v2.0", "token"] if method == "POST" => {
            route(RequestKind::EntraToken, Plane::Identity, None)
        }
        [_, "v2.0", ".well-known", "openid-configuration"]
        | ["common", "discovery", "instance"] => route(RequestKind::Other, Plane::Identity, None),
        ["secrets"] | ["secrets", ""] if get => route(RequestKind::ListSecrets, Plane::Data, None),
        ["secrets", name, "versions"] | ["secrets", name, "versions", ""] if get => {
            route(RequestKind::ListVersions, Plane::Data, Some(name))
        }
        ["secrets", name] | ["secrets", name, _] | ["secrets", name, _, ""] if get => {
            route(RequestKind::GetSecret, Plane::Data, Some(name))
        }
        ["secrets", name, ..] if !name.is_empty() => {
            route(RequestKind::Other, Plane::Data, Some(name))
        }
        _ => route(RequestKind::Other, Plane::Data, None),
    }
}

impl Fault {
    /// Whether this fault applies to `route`.
    pub fn matches(&self, route: &Route) -> bool {
        if route.plane == Plane::Admin {
            return false;
        }
        let kind_ok = match self.kind {
            None => route.plane == Plane::Data,
            Some(kind) => kind == route.kind,
        };
        let name_ok = match (&self.name, &route.name) {
            (None, _) => true,
            (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
            (Some(_), None) => false,
        };
        kind_ok && name_ok
    }
}

/// Takes the first fault matching `route`, decrementing its count and removing it when spent.
pub fn take_fault(faults: &mut Vec<Fault>, route: &Route) -> Option<FaultAction> {
    let index = faults.iter().position(|f| f.matches(route))?;
    let fault = faults.get_mut(index)?;
    let action = fault.action.clone();
    match &mut fault.times {
        None => {}
        Some(n) if *n > 1 => *n -= 1,
        Some(_) => {
            faults.remove(index);
        }
    }
    Some(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault(method: &str, path: &str) -> (RequestKind, Plane, Option<String>) {
        let r = classify(Server::Vault, method, path);
        (r.kind, r.plane, r.name)
    }

    #[test]
    fn classifies_vault_paths() {
        use Plane::{Data, Identity};
        use RequestKind::*;
        let some = |s: &str| Some(s.to_owned());
        let table = [
            ("GET", "/secrets", (ListSecrets, Data, None)),
            ("GET", "/secrets/", (ListSecrets, Data, None)),
            ("GET", "/secrets/db", (GetSecret, Data, some("db"))),
            ("GET", "/secrets/db/", (GetSecret, Data, some("db"))),
            ("GET", "/secrets/db/0123", (GetSecret, Data, some("db"))),
            (
                "GET",
                "/secrets/db/versions",
                (ListVersions, Data, some("db")),
            ),
            ("PUT", "/secrets/db", (Other, Data, some("db"))),
            ("GET", "/keys/k", (Other, Data, None)),
            ("GET", "/_admin/counters", (Admin, Plane::Admin, None)),
            (
                "POST",
                "/tenant/oauth2/v2.0/token",
                (EntraToken, Identity, None),
            ),
            ("GET", "/tenant/oauth2/v2.0/token", (Other, Data, None)),
        ];
        for (method, path, want) in table {
            assert_eq!(vault(method, path), want, "{method} {path}");
        }
        for path in [
            "/metadata/identity/oauth2/token",
            "/metadata/identity/oauth2/token/",
        ] {
            let imds = classify(Server::Imds, "GET", path);
            assert_eq!(
                (imds.kind, imds.plane),
                (RequestKind::ImdsToken, Plane::Identity),
                "{path}"
            );
        }
        let other = classify(Server::Imds, "GET", "/metadata/identity/oauth2/tokens");
        assert_eq!(other.kind, RequestKind::Other);
    }

    fn fault(kind: Option<RequestKind>, name: Option<&str>, times: Option<u32>) -> Fault {
        Fault {
            kind,
            name: name.map(str::to_owned),
            action: FaultAction::Drop,
            times,
        }
    }

    #[test]
    fn matching_respects_kind_plane_and_name() {
        let get_db = classify(Server::Vault, "GET", "/secrets/DB");
        let list = classify(Server::Vault, "GET", "/secrets");
        let imds = classify(Server::Imds, "GET", "/metadata/identity/oauth2/token");
        let admin = classify(Server::Vault, "POST", "/_admin/faults");
        let any = fault(None, None, None);
        assert!(any.matches(&get_db) && any.matches(&list));
        assert!(!any.matches(&imds) && !any.matches(&admin));
        assert!(fault(Some(RequestKind::ImdsToken), None, None).matches(&imds));
        assert!(!fault(Some(RequestKind::Admin), None, None).matches(&admin));
        let named = fault(None, Some("db"), None);
        assert!(named.matches(&get_db));
        assert!(!named.matches(&list));
        assert!(!fault(Some(RequestKind::ListSecrets), None, None).matches(&get_db));
    }

    #[test]
    fn times_decrement_and_remove() {
        let route = classify(Server::Vault, "GET", "/secrets/a");
        let mut faults = vec![
            fault(Some(RequestKind::ListSecrets), None, None),
            fault(None, None, Some(2)),
        ];
        assert!(take_fault(&mut faults, &route).is_some());
        assert_eq!(faults.get(1).and_then(|f| f.times), Some(1));
        assert!(take_fault(&mut faults, &route).is_some());
        assert_eq!(faults.len(), 1);
        assert!(take_fault(&mut faults, &route).is_none());
        let list = classify(Server::Vault, "GET", "/secrets");
        for _ in 0..3 {
            assert!(take_fault(&mut faults, &list).is_some());
        }
    }

    #[test]
    fn fault_json_shape() {
        let json = r#"{"kind":"get_secret","name":"db","action":{"status":{"status":429,"retry_after":2}},"times":1}"#;
        let f: Result<Fault, _> = serde_json::from_str(json);
        assert_eq!(
            f.ok(),
            Some(Fault {
                kind: Some(RequestKind::GetSecret),
                name: Some("db".into()),
                action: FaultAction::Status {
                    status: 429,
                    retry_after: Some(2)
                },
                times: Some(1),
            })
        );
        let f: Result<Fault, _> = serde_json::from_str(r#"{"action":{"latency":250}}"#);
        assert_eq!(
            f.ok().map(|f| f.action),
            Some(FaultAction::Latency(Duration::from_millis(250)))
        );
        let f: Result<Fault, _> = serde_json::from_str(r#"{"action":"drop"}"#);
        assert_eq!(f.ok().map(|f| f.action), Some(FaultAction::Drop));
    }
}
