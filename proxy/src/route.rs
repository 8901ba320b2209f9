//! HTTP routing: Host/:authority → virtual host, then the first rule whose
//! path, method, headers and query match. Built once per snapshot with the
//! lookup tables and compiled expressions it needs, so matching a request
//! allocates nothing. A rule carries the traffic policy of its requests:
//! weighted backends (subsets of a cluster's endpoints), mirroring, header
//! edits, timeouts and retries.

use crate::cluster::Cluster;
use crate::lb::Balancer;
use crate::metrics::RequestMetrics;
use crate::policy::retry::RetryPolicy;
use http::{HeaderName, HeaderValue};
use metrics::Counter;
use rand::Rng;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use xds_proto::v1::{self as pb, route_rule::Path, string_match::Match};

pub const BACKEND_REQUESTS: &str = "weft_backend_requests_total";

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathMatch {
    Any,
    Prefix(String),
    Exact(String),
    Regex(#[serde(serialize_with = "regex_str")] regex::Regex),
}

fn regex_str<S: serde::Serializer>(r: &regex::Regex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

/// A header or query-parameter condition.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueMatch {
    Exact(String),
    Regex(#[serde(serialize_with = "regex_str")] regex::Regex),
    Present,
}

impl ValueMatch {
    fn matches(&self, v: Option<&[u8]>) -> bool {
        match (self, v) {
            (_, None) => false,
            (ValueMatch::Present, Some(_)) => true,
            (ValueMatch::Exact(e), Some(v)) => e.as_bytes() == v,
            (ValueMatch::Regex(r), Some(v)) => std::str::from_utf8(v).is_ok_and(|v| r.is_match(v)),
        }
    }
}

/// Anchors a route regex so it must match the whole value.
fn compile_regex(re: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("bad regex \"{re}\": {e}"))
}

fn value_match(m: &pb::StringMatch) -> Result<ValueMatch, String> {
    Ok(match &m.r#match {
        Some(Match::Exact(v)) => ValueMatch::Exact(v.clone()),
        Some(Match::Regex(r)) => ValueMatch::Regex(compile_regex(r)?),
        Some(Match::Present(_)) | None => ValueMatch::Present,
    })
}

/// A subset of a cluster's hosts with its own balancer (same host state).
#[derive(Debug)]
pub struct Subset {
    pub hosts: Vec<crate::host::Host>,
    pub lb: Balancer,
}

/// One destination of a rule.
#[derive(Debug, Serialize)]
pub struct Backend {
    pub name: String,
    pub weight: u32,
    #[serde(skip)]
    pub cluster: Arc<Cluster>,
    /// None: every endpoint of the cluster.
    #[serde(skip)]
    pub subset: Option<Subset>,
    /// `weft_backend_requests_total`, for rules that split or mirror (a
    /// single backend is already counted per route).
    #[serde(skip)]
    pub requests: Option<Counter>,
}

impl Backend {
    fn build(
        b: &pb::Backend,
        route: &str,
        clusters: &BTreeMap<String, Arc<Cluster>>,
        counted: bool,
    ) -> Result<Backend, String> {
        let cluster = clusters
            .get(&b.cluster)
            .ok_or_else(|| format!("unknown cluster \"{}\"", b.cluster))?
            .clone();
        let subset = (!b.subset.is_empty()).then(|| {
            let hosts: Vec<_> = cluster
                .hosts
                .iter()
                .filter(|h| b.subset.iter().all(|(k, v)| h.labels.get(k) == Some(v)))
                .cloned()
                .collect();
            Subset {
                lb: Balancer::new(cluster.lb.config.clone(), &hosts),
                hosts,
            }
        });
        let name = if b.name.is_empty() {
            b.cluster.clone()
        } else {
            b.name.clone()
        };
        Ok(Backend {
            requests: counted.then(|| {
                metrics::counter!(BACKEND_REQUESTS, "route" => route.to_string(), "backend" => name.clone())
            }),
            name,
            weight: b.weight,
            cluster,
            subset,
        })
    }

    /// The hosts requests to this backend choose from, and their balancer.
    pub fn count_request(&self) {
        if let Some(c) = &self.requests {
            c.increment(1);
        }
    }

    pub fn hosts(&self) -> (&[crate::host::Host], &Balancer) {
        match &self.subset {
            Some(s) => (&s.hosts, &s.lb),
            None => (&self.cluster.hosts, &self.cluster.lb),
        }
    }
}

/// Header edits: remove, then set, then add.
#[derive(Debug, Default, Serialize)]
pub struct HeaderOps {
    #[serde(serialize_with = "pairs")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "pairs")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "names")]
    pub remove: Vec<HeaderName>,
}

fn pairs<S: serde::Serializer>(v: &[(HeaderName, HeaderValue)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(
        v.iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap_or(""))),
    )
}

fn names<S: serde::Serializer>(v: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|n| n.as_str()))
}

impl HeaderOps {
    fn from_pb(ops: Option<&pb::HeaderOps>) -> Result<Option<HeaderOps>, String> {
        let Some(ops) = ops else { return Ok(None) };
        let pair = |h: &pb::HeaderValue| {
            Ok::<_, String>((
                HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| format!("bad header name \"{}\"", h.name))?,
                HeaderValue::from_str(&h.value)
                    .map_err(|_| format!("bad value for header \"{}\"", h.name))?,
            ))
        };
        let out = HeaderOps {
            add: ops.add.iter().map(pair).collect::<Result<_, _>>()?,
            set: ops.set.iter().map(pair).collect::<Result<_, _>>()?,
            remove: ops
                .remove
                .iter()
                .map(|n| {
                    HeaderName::from_bytes(n.as_bytes())
                        .map_err(|_| format!("bad header name \"{n}\""))
                })
                .collect::<Result<_, _>>()?,
        };
        Ok((!(out.add.is_empty() && out.set.is_empty() && out.remove.is_empty())).then_some(out))
    }

    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Rule {
    pub path: PathMatch,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "header_conditions"
    )]
    pub headers: Vec<(HeaderName, ValueMatch)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<(String, ValueMatch)>,
    pub backends: Vec<Backend>,
    #[serde(skip)]
    total_weight: u64,
    // Rarely set: boxed so a plain rule stays small (a sidecar may hold
    // thousands).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Box<(Backend, f64)>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<Box<HeaderOps>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<Box<HeaderOps>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    #[serde(skip)]
    pub retry: RetryPolicy,
    #[serde(skip)]
    pub metrics: RequestMetrics,
}

fn header_conditions<S: serde::Serializer>(
    h: &[(HeaderName, ValueMatch)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(h.iter().map(|(n, v)| (n.as_str(), v)))
}

impl Rule {
    fn matches(
        &self,
        path: &str,
        query: Option<&str>,
        method: &http::Method,
        headers: &http::HeaderMap,
    ) -> bool {
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Prefix(p) => path_has_prefix(path, p),
            PathMatch::Exact(p) => path == p,
            PathMatch::Regex(r) => r.is_match(path),
        };
        path_ok
            && self.method.as_deref().is_none_or(|m| m == method.as_str())
            && self
                .headers
                .iter()
                .all(|(name, m)| m.matches(headers.get(name).map(|v| v.as_bytes())))
            && self.query.iter().all(|(name, m)| {
                m.matches(query.and_then(|q| query_param(q, name)).map(str::as_bytes))
            })
    }

    /// The backend for one request, by weight.
    pub fn pick_backend(&self) -> &Backend {
        if self.backends.len() == 1 || self.total_weight == 0 {
            return &self.backends[0];
        }
        let mut x = rand::rng().random_range(0..self.total_weight);
        for b in &self.backends {
            let w = u64::from(b.weight);
            if x < w {
                return b;
            }
            x -= w;
        }
        &self.backends[self.backends.len() - 1]
    }

    /// Whether this request is copied to the mirror.
    pub fn mirror_this(&self) -> Option<&Backend> {
        let (b, percent) = self.mirror.as_deref()?;
        (*percent >= 100.0 || rand::rng().random::<f64>() * 100.0 < *percent).then_some(b)
    }
}

/// The first value of `name` in a query string (not percent-decoded: names
/// and values are compared as sent).
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
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
    /// Some rule matches on headers (routing then needs the header map).
    #[serde(skip)]
    uses_headers: bool,
}

impl Rule {
    /// The rule for intercepted HTTP to a mesh address (a service VIP or an
    /// endpoint) that no route names: every request to `cluster`, with the
    /// default retries.
    pub fn intercepted(
        cluster: &str,
        clusters: &BTreeMap<String, Arc<Cluster>>,
    ) -> Result<Rule, String> {
        let r = pb::RouteRule {
            backends: vec![pb::Backend {
                cluster: cluster.to_string(),
                weight: 1,
                ..Default::default()
            }],
            ..Default::default()
        };
        Rule::build("intercepted", &r, clusters)
    }

    fn build(
        route: &str,
        r: &pb::RouteRule,
        clusters: &BTreeMap<String, Arc<Cluster>>,
    ) -> Result<Rule, String> {
        if r.backends.is_empty() {
            return Err("no backends".into());
        }
        let split = r.backends.len() > 1 || r.mirror.is_some();
        let backends = r
            .backends
            .iter()
            .map(|b| Backend::build(b, route, clusters, split))
            .collect::<Result<Vec<_>, _>>()?;
        let headers = r
            .headers
            .iter()
            .map(|h| {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| format!("bad header name \"{}\"", h.name))?;
                Ok((name, value_match(h)?))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let query = r
            .query
            .iter()
            .map(|q| Ok((q.name.clone(), value_match(q)?)))
            .collect::<Result<Vec<_>, String>>()?;
        let mirror = match &r.mirror {
            Some(m) => {
                let b = m.backend.as_ref().ok_or("mirror without a backend")?;
                Some(Box::new((
                    Backend::build(b, route, clusters, true)?,
                    m.percent,
                )))
            }
            None => None,
        };
        let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
        Ok(Rule {
            path: match &r.path {
                None => PathMatch::Any,
                Some(Path::Prefix(p)) => PathMatch::Prefix(p.clone()),
                Some(Path::Exact(p)) => PathMatch::Exact(p.clone()),
                Some(Path::Regex(p)) => PathMatch::Regex(compile_regex(p)?),
            },
            method: (!r.method.is_empty()).then(|| r.method.clone()),
            headers,
            query,
            total_weight: backends.iter().map(|b| u64::from(b.weight)).sum(),
            metrics: RequestMetrics::new("outbound", route, &backends[0].cluster.service),
            backends,
            mirror,
            request_headers: HeaderOps::from_pb(r.request_headers.as_deref())?.map(Box::new),
            response_headers: HeaderOps::from_pb(r.response_headers.as_deref())?.map(Box::new),
            timeout: ms(r.timeout_ms),
            idle_timeout: ms(r.idle_timeout_ms),
            retry: RetryPolicy::from_pb(r.retry.as_deref())?,
        })
    }
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
                let at = |e: String| format!("route \"{}\" rule {j}: {e}", vh.name);
                let rule = Rule::build(&vh.name, r, clusters).map_err(at)?;
                out.uses_headers |= !rule.headers.is_empty();
                rules.push(rule);
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

    /// Whether matching a request needs its headers.
    pub fn uses_headers(&self) -> bool {
        self.uses_headers
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
        query: Option<&str>,
        method: &http::Method,
        headers: &http::HeaderMap,
    ) -> Option<(&VirtualHost, &Rule)> {
        let (v, r) = self.route_index(authority, path, query, method, headers)?;
        let vh = &self.virtual_hosts[v];
        Some((vh, &vh.rules[r]))
    }

    /// Like `route`, as indexes (kept in the request context across phases).
    pub fn route_index(
        &self,
        authority: &str,
        path: &str,
        query: Option<&str>,
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
            .position(|r| r.matches(path, query, method, headers))?;
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
    use crate::snapshot::Snapshot;
    use xds_proto::type_url;
    use xds_proto::v1::resource::Kind as RKind;

    fn table() -> Snapshot {
        let cluster = |n: &str| pb::Resource {
            name: n.into(),
            type_url: type_url::CLUSTER.into(),
            kind: Some(RKind::Cluster(Box::new(pb::Cluster {
                name: n.into(),
                service: n.into(),
                namespace: "ns".into(),
                port: 80,
                protocol: pb::Protocol::Http as i32,
                ..Default::default()
            }))),
        };
        let rule =
            |path: Option<Path>, method: &str, headers: Vec<(&str, &str)>, c: &str| pb::RouteRule {
                path,
                method: method.into(),
                headers: headers
                    .into_iter()
                    .map(|(n, v)| pb::StringMatch {
                        name: n.into(),
                        r#match: Some(if v == "*" {
                            Match::Present(true)
                        } else if let Some(re) = v.strip_prefix('~') {
                            Match::Regex(re.into())
                        } else {
                            Match::Exact(v.into())
                        }),
                    })
                    .collect(),
                backends: vec![pb::Backend {
                    cluster: c.into(),
                    weight: 1,
                    ..Default::default()
                }],
                ..Default::default()
            };
        let rt = pb::RouteTable {
            name: "outbound".into(),
            virtual_hosts: vec![
                pb::VirtualHost {
                    name: "ns/api".into(),
                    hosts: vec!["api".into(), "api.ns".into()],
                    rules: vec![
                        rule(None, "", vec![("x-canary", "1")], "canary"),
                        rule(None, "", vec![("x-flag", "*")], "flagged"),
                        rule(None, "", vec![("x-user", "~u[0-9]+")], "users"),
                        {
                            let mut r = rule(
                                Some(Path::Regex("/items/[0-9]+".into())),
                                "",
                                vec![],
                                "item",
                            );
                            r.query = vec![pb::StringMatch {
                                name: "view".into(),
                                r#match: Some(Match::Exact("full".into())),
                            }];
                            r
                        },
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
        let mut resources: Vec<pb::Resource> = [
            "canary", "flagged", "users", "item", "health", "v1", "default", "wild", "any",
        ]
        .iter()
        .map(|c| cluster(c))
        .collect();
        resources.push(pb::Resource {
            name: "outbound".into(),
            type_url: type_url::ROUTE_TABLE.into(),
            kind: Some(RKind::RouteTable(rt)),
        });
        crate::snapshot::Snapshot::from_resources("r1", resources).expect("valid snapshot")
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
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        s.routes
            .route(host, path, query, &m, &map)
            .map(|(_, r)| r.backends[0].cluster.name.clone())
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
    fn header_presence_regex_and_query_conditions() {
        let s = table();
        assert_eq!(pick(&s, "api", "/", "GET", &[("x-flag", "")]), "flagged");
        assert_eq!(pick(&s, "api", "/", "GET", &[("x-user", "u42")]), "users");
        assert_eq!(
            pick(&s, "api", "/", "GET", &[("x-user", "u42x")]),
            "default",
            "regex is anchored"
        );
        assert_eq!(pick(&s, "api", "/items/7?view=full", "GET", &[]), "item");
        assert_eq!(
            pick(&s, "api", "/items/7?a=1&view=full", "GET", &[]),
            "item"
        );
        assert_eq!(
            pick(&s, "api", "/items/7?view=short", "GET", &[]),
            "default"
        );
        assert_eq!(pick(&s, "api", "/items/x?view=full", "GET", &[]), "default");
    }

    #[test]
    fn wildcard_and_catch_all_hosts() {
        let s = table();
        assert_eq!(pick(&s, "a.example.com", "/", "GET", &[]), "wild");
        assert_eq!(pick(&s, "example.com", "/", "GET", &[]), "any");
        assert_eq!(pick(&s, "[::1]:80", "/", "GET", &[]), "any");
    }
}
