//! The YAML kinds operators apply (`apiVersion: weft.dev/v1`): their shapes,
//! exactly as written in files. Unknown fields are rejected by serde.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const API_VERSION: &str = "weft.dev/v1";
pub const DEFAULT_NAMESPACE: &str = "default";

/// The part every document shares; `spec` is decoded per kind afterwards so
/// an error can name the exact field path inside it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawDocument {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: serde_yaml_ng::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
    Opaque,
}

impl Protocol {
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    pub ports: Vec<ServicePort>,
    /// Where instances of the service listen (static for now; the registry
    /// issue adds dynamic ones).
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    /// Virtual IPs that identify the service for intercepted traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// The service account its workloads run as: their identity is
    /// spiffe://<trust-domain>/ns/<namespace>/sa/<serviceAccount>. Defaults
    /// to the service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

impl ServiceSpec {
    pub fn service_account_or<'a>(&'a self, service_name: &'a str) -> &'a str {
        self.service_account.as_deref().unwrap_or(service_name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: i64,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSpec {
    pub address: String,
    /// Overrides the service port (e.g. a sidecar's inbound port when the
    /// mesh runs without traffic interception).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// Whether a Weft sidecar fronts this endpoint (default true): callers
    /// then speak mTLS to it and check its identity. false: plaintext, for
    /// workloads outside the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteSpec {
    /// Services whose sidecars use this route: "name" (route's namespace) or
    /// "name.namespace". Empty: every service in the route's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// Host / :authority names (no port); "*.suffix" and "*" allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// HTTP rules, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRule>,
    /// Opaque TCP forwarding from a local port (explicit mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRule {
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<RequestMatch>,
    pub destination: Destination,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Destination {
    /// "name" (route's namespace) or "name.namespace".
    pub service: String,
    pub port: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRoute {
    pub bind_port: i64,
    pub destination: Destination,
}

/// Who may call a service. Either a policy for one service (`target` +
/// `rules`) or the default for a namespace (`default`, no target); in the
/// `weft-system` namespace the default applies to the whole mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<AuthzTarget>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthzRule>,
    /// allow | deny: what happens to a call no rule decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<AuthzAction>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzTarget {
    pub service: String,
    /// Only this port of the service (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthzAction {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzRule {
    pub action: AuthzAction,
    /// Callers; empty matches every caller.
    #[serde(default, skip_serializing_if = "AuthzFrom::is_empty")]
    pub from: AuthzFrom,
    /// HTTP conditions; a rule with any never matches opaque TCP.
    #[serde(default, skip_serializing_if = "AuthzTo::is_empty")]
    pub to: AuthzTo,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzFrom {
    /// Exact SPIFFE IDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domains: Vec<String>,
}

impl AuthzFrom {
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty() && self.namespaces.is_empty() && self.trust_domains.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzTo {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

impl AuthzTo {
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.methods.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Service,
    Route,
    Authorization,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "Service" => Some(Kind::Service),
            "Route" => Some(Kind::Route),
            "Authorization" => Some(Kind::Authorization),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Route => "Route",
            Kind::Authorization => "Authorization",
        }
    }
}

/// Identity of a stored object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn storage_key(&self) -> String {
        format!("{}/{}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} \"{}/{}\"",
            self.kind.as_str(),
            self.namespace,
            self.name
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "spec")]
pub enum Spec {
    Service(ServiceSpec),
    Route(RouteSpec),
    Authorization(AuthorizationSpec),
}

/// A validated object, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    pub metadata: Metadata,
    #[serde(flatten)]
    pub spec: Spec,
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self.spec {
            Spec::Service(_) => Kind::Service,
            Spec::Route(_) => Kind::Route,
            Spec::Authorization(_) => Kind::Authorization,
        }
    }

    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            kind: self.kind(),
            namespace: self.metadata.namespace.clone(),
            name: self.metadata.name.clone(),
        }
    }

    /// The object in the shape an operator writes it (for `weftctl get`).
    pub fn to_manifest(&self) -> serde_json::Value {
        let spec = match &self.spec {
            Spec::Service(s) => serde_json::to_value(s),
            Spec::Route(r) => serde_json::to_value(r),
            Spec::Authorization(a) => serde_json::to_value(a),
        }
        .unwrap_or(serde_json::Value::Null);
        serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": self.kind().as_str(),
            "metadata": self.metadata,
            "spec": spec,
        })
    }
}
