//! HTTP routing: Host/:authority → virtual host, then the first rule whose
//! path, method and headers match. Built once per snapshot with the lookup
//! tables it needs, so matching a request allocates nothing.

use crate::metrics::RequestMetrics;
use crate::snapshot::Cluster;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use xds_proto::v1::{self as pb, route_rule::Path};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathMatch {
    Any,
    Prefix(String),
    Exact(String),
}

#[derive(Debug, Serialize)]
pub struct Rule {
    pub path: PathMatch,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "headers_as_pairs"
    )]
    pub headers: Vec<(http::HeaderName, String)>,
    pub cluster: String,
    #[serde(skip)]
    pub target: Arc<Cluster>,
    #[serde(skip)]
    pub metrics: RequestMetrics,
}

fn headers_as_pairs<S: serde::Serializer>(
    h: &[(http::HeaderName, String)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(h.iter().map(|(n, v)| (n.as_str(), v)))
}

impl Rule {
    fn matches(&self, path: &str, method: &http::Method, headers: &http::HeaderMap) -> bool {
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Prefix(p) => path_has_prefix(path, p),
            PathMatch::Exact(p) => path == p,
        };
        path_ok
            && self.method.as_deref().is_none_or(|m| m == method.as_str())
            && self.headers.iter().all(|(name, value)| {
                headers
                    .get(name)
                    .is_some_and(|v| v.as_bytes() == value.as_bytes())
            })
    }
}

/// "/api" matches "/api", "/api/x" and "/api?q", not "/apix"; a prefix
/// ending in '/' matches anything under it.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    if prefix.ends_with('/') || path.len() == prefix.len() {
        return true;
    }
    matches!(path.as_bytes()[prefix.len()], b'/' | b'?' | b'#')
}

#[derive(Debug, Serialize)]
pub struct VirtualHost {
    pub name: String,
    pub hosts: Vec<String>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Default, Serialize)]
pub struct RouteTable {
    pub virtual_hosts: Vec<VirtualHost>,
    #[serde(skip)]
    exact: HashMap<String, usize>,
    /// ("*.example.com" stored as ".example.com", index), longest first.
    #[serde(skip)]
    suffixes: Vec<(String, usize)>,
    #[serde(skip)]
    catch_all: Option<usize>,
}

impl RouteTable {
    pub fn build(
        table: &pb::RouteTable,
        clusters: &BTreeMap<String, Arc<Cluster>>,
    ) -> Result<RouteTable, String> {
        let mut out = RouteTable::default();
        for (i, vh) in table.virtual_hosts.iter().enumerate() {
            let mut rules = Vec::with_capacity(vh.rules.len());
            for (j, r) in vh.rules.iter().enumerate() {
                let target = clusters
                    .get(&r.cluster)
                    .ok_or_else(|| {
                        format!(
                            "route \"{}\" rule {j}: unknown cluster \"{}\"",
                            vh.name, r.cluster
                        )
                    })?
                    .clone();
                let headers = r
                    .headers
                    .iter()
                    .map(|h| {
                        http::HeaderName::from_bytes(h.name.as_bytes())
                            .map(|n| (n, h.value.clone()))
                            .map_err(|_| {
                                format!(
                                    "route \"{}\" rule {j}: bad header name \"{}\"",
                                    vh.name, h.name
                                )
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                rules.push(Rule {
                    path: match &r.path {
                        None => PathMatch::Any,
                        Some(Path::Prefix(p)) => PathMatch::Prefix(p.clone()),
                        Some(Path::Exact(p)) => PathMatch::Exact(p.clone()),
                    },
                    method: (!r.method.is_empty()).then(|| r.method.clone()),
                    headers,
                    metrics: RequestMetrics::new("outbound", &vh.name, &target.service),
                    cluster: r.cluster.clone(),
                    target,
                });
            }
            for h in &vh.hosts {
                let h = h.to_ascii_lowercase();
                if h == "*" {
                    out.catch_all.get_or_insert(i);
                } else if let Some(suffix) = h.strip_prefix('*') {
                    out.suffixes.push((suffix.to_string(), i));
                } else {
                    // First route claiming a host wins (routes arrive sorted by name).
                    out.exact.entry(h).or_insert(i);
                }
            }
            out.virtual_hosts.push(VirtualHost {
                name: vh.name.clone(),
                hosts: vh.hosts.clone(),
                rules,
            });
        }
        out.suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        Ok(out)
    }

    fn lookup(&self, host: &str) -> Option<usize> {
        if let Some(i) = self.exact.get(host) {
            return Some(*i);
        }
        self.suffixes
            .iter()
            .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
            .map(|(_, i)| *i)
            .or(self.catch_all)
    }

    /// The rule a request goes to.
    pub fn route(
        &self,
        authority: &str,
        path: &str,
        method: &http::Method,
        headers: &http::HeaderMap,
    ) -> Option<(&VirtualHost, &Rule)> {
        let (v, r) = self.route_index(authority, path, method, headers)?;
        let vh = &self.virtual_hosts[v];
        Some((vh, &vh.rules[r]))
    }

    /// Like `route`, as indexes (kept in the request context across phases).
    pub fn route_index(
        &self,
        authority: &str,
        path: &str,
        method: &http::Method,
        headers: &http::HeaderMap,
    ) -> Option<(usize, usize)> {
        let host = strip_port(authority);
        let v = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.lookup(&host.to_ascii_lowercase())
        } else {
            self.lookup(host)
        }?;
        let r = self.virtual_hosts[v]
            .rules
            .iter()
            .position(|r| r.matches(path, method, headers))?;
        Some((v, r))
    }

    pub fn rule(&self, (v, r): (usize, usize)) -> Option<(&VirtualHost, &Rule)> {
        let vh = self.virtual_hosts.get(v)?;
        Some((vh, vh.rules.get(r)?))
    }
}

fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{ResourceCache, Snapshot};
    use xds_proto::type_url;
    use xds_proto::v1::resource::Kind as RKind;

    fn table() -> Snapshot {
        let cluster = |n: &str| pb::Resource {
            name: n.into(),
            type_url: type_url::CLUSTER.into(),
            kind: Some(RKind::Cluster(pb::Cluster {
                name: n.into(),
                service: n.into(),
                namespace: "ns".into(),
                port: 80,
                protocol: pb::Protocol::Http as i32,
                addresses: vec![],
            })),
        };
        let rule =
            |path: Option<Path>, method: &str, headers: Vec<(&str, &str)>, c: &str| pb::RouteRule {
                path,
                method: method.into(),
                headers: headers
                    .into_iter()
                    .map(|(n, v)| pb::HeaderMatch {
                        name: n.into(),
                        value: v.into(),
                    })
                    .collect(),
                cluster: c.into(),
            };
        let rt = pb::RouteTable {
            name: "outbound".into(),
            virtual_hosts: vec![
                pb::VirtualHost {
                    name: "ns/api".into(),
                    hosts: vec!["api".into(), "api.ns".into()],
                    rules: vec![
                        rule(None, "", vec![("x-canary", "1")], "canary"),
                        rule(Some(Path::Exact("/health".into())), "GET", vec![], "health"),
                        rule(Some(Path::Prefix("/v1".into())), "", vec![], "v1"),
                        rule(None, "", vec![], "default"),
                    ],
                },
                pb::VirtualHost {
                    name: "ns/wild".into(),
                    hosts: vec!["*.example.com".into()],
                    rules: vec![rule(None, "", vec![], "wild")],
                },
                pb::VirtualHost {
                    name: "ns/any".into(),
                    hosts: vec!["*".into()],
                    rules: vec![rule(None, "", vec![], "any")],
                },
            ],
        };
        let mut resources: Vec<pb::Resource> = ["canary", "health", "v1", "default", "wild", "any"]
            .iter()
            .map(|c| cluster(c))
            .collect();
        resources.push(pb::Resource {
            name: "outbound".into(),
            type_url: type_url::ROUTE_TABLE.into(),
            kind: Some(RKind::RouteTable(rt)),
        });
        let cache = ResourceCache::default()
            .apply(&pb::DiscoveryResponse {
                version: "r1".into(),
                nonce: "1".into(),
                resources,
                removed: vec![],
                full_state: true,
            })
            .unwrap();
        Snapshot::build("r1", &cache).unwrap()
    }

    fn pick(
        s: &Snapshot,
        host: &str,
        path: &str,
        method: &str,
        headers: &[(&str, &str)],
    ) -> String {
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let m = http::Method::from_bytes(method.as_bytes()).unwrap();
        s.routes
            .route(host, path, &m, &map)
            .map(|(_, r)| r.cluster.clone())
            .unwrap_or_default()
    }

    #[test]
    fn first_matching_rule_wins_by_header_path_and_method() {
        let s = table();
        assert_eq!(
            pick(&s, "api", "/v1/x", "GET", &[("x-canary", "1")]),
            "canary"
        );
        assert_eq!(pick(&s, "api:8080", "/health", "GET", &[]), "health");
        assert_eq!(pick(&s, "API.ns", "/health", "POST", &[]), "default");
        assert_eq!(pick(&s, "api", "/v1", "GET", &[]), "v1");
        assert_eq!(pick(&s, "api", "/v1?q=1", "GET", &[]), "v1");
        assert_eq!(pick(&s, "api", "/v10", "GET", &[]), "default");
    }

    #[test]
    fn wildcard_and_catch_all_hosts() {
        let s = table();
        assert_eq!(pick(&s, "a.example.com", "/", "GET", &[]), "wild");
        assert_eq!(pick(&s, "example.com", "/", "GET", &[]), "any");
        assert_eq!(pick(&s, "[::1]:80", "/", "GET", &[]), "any");
    }
}
