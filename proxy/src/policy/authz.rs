//! Authorization on the inbound side: who may call this workload. Built once
//! per snapshot from the pushed `AuthorizationPolicy`; a check reads only the
//! snapshot (no locks) and counts its decision on a pre-registered counter.
//!
//! Order: any matching DENY rule denies; if ALLOW rules exist for the port,
//! one of them must match; otherwise the default (namespace, mesh, or allow).

use metrics::Counter;
use std::collections::HashMap;
use std::sync::Arc;
use weft_mesh_tls::SpiffeId;
use xds_proto::v1 as pb;

pub const DECISIONS: &str = "weft_authz_decisions_total";

/// Inbound requests (HTTP) and connections (TCP) per verified caller.
pub const PEER_TRAFFIC: &str = "weft_inbound_peer_total";

/// A caller proven by its certificate, parsed once per connection, with its
/// traffic counter registered once per connection (no label lookup per
/// request).
#[derive(Debug, Clone)]
pub struct Peer {
    pub id: SpiffeId,
    /// `id` as a string (the header value and exact-match form).
    pub uri: Arc<str>,
    pub traffic: Counter,
}

impl Peer {
    pub fn new(id: SpiffeId) -> Peer {
        let uri: Arc<str> = Arc::from(id.to_string().as_str());
        let traffic = metrics::counter!(PEER_TRAFFIC, "peer" => uri.to_string());
        Peer { id, uri, traffic }
    }
}

/// What is being asked for.
#[derive(Debug, Clone, Copy)]
pub enum Access<'a> {
    Http { path: &'a str, method: &'a str },
    Tcp,
}

#[derive(Debug)]
struct Rule {
    policy: Arc<str>,
    deny: bool,
    port: u16,
    identities: Vec<String>,
    namespaces: Vec<String>,
    trust_domains: Vec<String>,
    path_exact: Vec<String>,
    path_prefix: Vec<String>,
    methods: Vec<String>,
}

impl Rule {
    fn applies_to_port(&self, port: u16) -> bool {
        self.port == 0 || self.port == port
    }

    fn matches(&self, peer: Option<&Peer>, access: Access<'_>) -> bool {
        let any_from = self.identities.is_empty()
            && self.namespaces.is_empty()
            && self.trust_domains.is_empty();
        let from = any_from
            || peer.is_some_and(|p| {
                self.identities.iter().any(|i| **i == *p.uri)
                    || self.namespaces.contains(&p.id.namespace)
                    || self.trust_domains.contains(&p.id.trust_domain)
            });
        let http_only =
            !(self.path_exact.is_empty() && self.path_prefix.is_empty() && self.methods.is_empty());
        let to = match access {
            Access::Tcp => !http_only,
            Access::Http { path, method } => {
                let path = path.split('?').next().unwrap_or(path);
                let path_ok = (self.path_exact.is_empty() && self.path_prefix.is_empty())
                    || self.path_exact.iter().any(|p| p == path)
                    || self
                        .path_prefix
                        .iter()
                        .any(|p| path.starts_with(p.as_str()));
                let method_ok = self.methods.is_empty() || self.methods.iter().any(|m| m == method);
                path_ok && method_ok
            }
        };
        from && to
    }
}

/// One decision: allowed or not, and which policy said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    pub policy: Arc<str>,
}

#[derive(Debug)]
pub struct Authz {
    rules: Vec<Rule>,
    default_deny: bool,
    default_policy: Arc<str>,
    /// (policy, allow) → counter.
    counters: HashMap<(Arc<str>, bool), Counter>,
    /// mtls: permissive: plaintext callers (outside the mesh) are served,
    /// as callers without an identity. false: strict.
    pub permissive: bool,
}

impl Default for Authz {
    /// No policy pushed: everything is allowed.
    fn default() -> Self {
        Authz::from_pb(&pb::AuthorizationPolicy::default()).unwrap_or_else(|_| Authz {
            rules: vec![],
            default_deny: false,
            default_policy: Arc::from("default"),
            counters: HashMap::new(),
            permissive: false,
        })
    }
}

impl Authz {
    pub fn from_pb(p: &pb::AuthorizationPolicy) -> Result<Authz, String> {
        let default_policy: Arc<str> = if p.default_policy.is_empty() {
            Arc::from("default")
        } else {
            Arc::from(p.default_policy.as_str())
        };
        let mut rules = Vec::with_capacity(p.rules.len());
        let mut names: HashMap<String, Arc<str>> = HashMap::new();
        for r in &p.rules {
            let port = u16::try_from(r.port)
                .map_err(|_| format!("authorization {}: bad port {}", r.policy, r.port))?;
            let policy = names
                .entry(r.policy.clone())
                .or_insert_with(|| Arc::from(r.policy.as_str()))
                .clone();
            rules.push(Rule {
                policy,
                deny: r.deny,
                port,
                identities: r.identities.clone(),
                namespaces: r.namespaces.clone(),
                trust_domains: r.trust_domains.clone(),
                path_exact: r.path_exact.clone(),
                path_prefix: r.path_prefix.clone(),
                methods: r.methods.clone(),
            });
        }
        let mut counters = HashMap::new();
        for policy in names.into_values().chain([default_policy.clone()]) {
            for allow in [true, false] {
                let decision = if allow { "allow" } else { "deny" };
                counters.insert(
                    (policy.clone(), allow),
                    metrics::counter!(DECISIONS, "decision" => decision, "policy" => policy.to_string()),
                );
            }
        }
        Ok(Authz {
            rules,
            default_deny: p.default_deny,
            default_policy,
            counters,
            permissive: p.permissive,
        })
    }

    /// Decides and counts.
    pub fn check(&self, port: u16, peer: Option<&Peer>, access: Access<'_>) -> Decision {
        let d = self.decide(port, peer, access);
        if let Some(c) = self.counters.get(&(d.policy.clone(), d.allow)) {
            c.increment(1);
        }
        d
    }

    fn decide(&self, port: u16, peer: Option<&Peer>, access: Access<'_>) -> Decision {
        let rules = || self.rules.iter().filter(|r| r.applies_to_port(port));
        if let Some(r) = rules().find(|r| r.deny && r.matches(peer, access)) {
            return Decision {
                allow: false,
                policy: r.policy.clone(),
            };
        }
        let mut allows = rules().filter(|r| !r.deny).peekable();
        if let Some(first) = allows.peek() {
            let first = first.policy.clone();
            return match allows.find(|r| r.matches(peer, access)) {
                Some(r) => Decision {
                    allow: true,
                    policy: r.policy.clone(),
                },
                None => Decision {
                    allow: false,
                    policy: first,
                },
            };
        }
        Decision {
            allow: !self.default_deny,
            policy: self.default_policy.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Peer {
        Peer::new(s.parse().unwrap())
    }

    fn rule(policy: &str, deny: bool) -> pb::AuthorizationRule {
        pb::AuthorizationRule {
            policy: policy.into(),
            deny,
            ..Default::default()
        }
    }

    const GET_API: Access<'static> = Access::Http {
        path: "/api/x?q=1",
        method: "GET",
    };

    #[test]
    fn no_policy_allows_everyone_and_a_deny_default_denies_everyone() {
        let open = Authz::default();
        assert!(open.check(80, None, GET_API).allow);
        let closed = Authz::from_pb(&pb::AuthorizationPolicy {
            default_deny: true,
            default_policy: "shop/default".into(),
            ..Default::default()
        })
        .unwrap();
        let d = closed.check(80, Some(&id("spiffe://td/ns/a/sa/b")), GET_API);
        assert_eq!((d.allow, &*d.policy), (false, "shop/default"));
    }

    #[test]
    fn allow_rules_admit_only_matching_callers_paths_and_methods() {
        let mut r = rule("shop/p", false);
        r.namespaces = vec!["web".into()];
        r.path_prefix = vec!["/api".into()];
        r.methods = vec!["GET".into()];
        let a = Authz::from_pb(&pb::AuthorizationPolicy {
            rules: vec![r],
            ..Default::default()
        })
        .unwrap();
        let web = id("spiffe://td/ns/web/sa/front");
        let other = id("spiffe://td/ns/batch/sa/job");
        assert!(a.check(80, Some(&web), GET_API).allow);
        assert!(!a.check(80, Some(&other), GET_API).allow);
        assert!(
            !a.check(80, None, GET_API).allow,
            "no identity, no namespace"
        );
        let post = Access::Http {
            path: "/api/x",
            method: "POST",
        };
        assert!(!a.check(80, Some(&web), post).allow);
        let admin = Access::Http {
            path: "/admin",
            method: "GET",
        };
        assert!(!a.check(80, Some(&web), admin).allow);
        // HTTP conditions never match opaque TCP.
        assert!(!a.check(80, Some(&web), Access::Tcp).allow);
    }

    #[test]
    fn a_matching_deny_rule_wins_over_allow_rules_and_ports_scope_rules() {
        let mut deny = rule("shop/no-admin", true);
        deny.path_exact = vec!["/admin".into()];
        let mut allow = rule("shop/all", false);
        allow.trust_domains = vec!["td".into()];
        let mut tcp_only = rule("shop/db", true);
        tcp_only.port = 5432;
        let a = Authz::from_pb(&pb::AuthorizationPolicy {
            rules: vec![deny, allow, tcp_only],
            ..Default::default()
        })
        .unwrap();
        let caller = id("spiffe://td/ns/web/sa/front");
        let admin = Access::Http {
            path: "/admin",
            method: "GET",
        };
        let d = a.check(80, Some(&caller), admin);
        assert_eq!((d.allow, &*d.policy), (false, "shop/no-admin"));
        assert!(a.check(80, Some(&caller), GET_API).allow);
        assert!(a.check(80, Some(&caller), Access::Tcp).allow);
        // The port-scoped deny (no conditions) closes TCP on 5432 only.
        assert!(!a.check(5432, Some(&caller), Access::Tcp).allow);
    }

    #[test]
    fn exact_identities_match_whole_ids_only() {
        let mut r = rule("shop/p", false);
        r.identities = vec!["spiffe://td/ns/web/sa/front".into()];
        let a = Authz::from_pb(&pb::AuthorizationPolicy {
            rules: vec![r],
            ..Default::default()
        })
        .unwrap();
        assert!(
            a.check(80, Some(&id("spiffe://td/ns/web/sa/front")), GET_API)
                .allow
        );
        assert!(
            !a.check(80, Some(&id("spiffe://td/ns/web/sa/frontend")), GET_API)
                .allow
        );
    }
}
