//! Rules across objects, on the configuration as it would be after an
//! apply or delete: references resolve, targets are unique, ports are free.

use crate::config::kinds::{Destination, RouteSpec, ServiceSpec};
use crate::config::{resolve_service_ref, ConfigError, ConfigSet, Located, ObjectKey};
use std::collections::BTreeMap;

/// `origin` tells where each object came from (for the message); objects
/// already stored are reported as `stored config`.
pub fn check_set(
    set: &ConfigSet,
    origin: &BTreeMap<ObjectKey, (String, usize)>,
) -> Result<(), ConfigError> {
    let rules = SetRules { set, origin };
    rules.authorizations()?;
    rules.policies()?;
    rules.queues()?;
    rules.queue_policies()?;
    rules.routes()
}

struct SetRules<'a> {
    set: &'a ConfigSet,
    origin: &'a BTreeMap<ObjectKey, (String, usize)>,
}

impl<'a> SetRules<'a> {
    /// An error about `key`'s object, located in the file it came from.
    fn error(&self, key: &ObjectKey, field: impl Into<String>, msg: String) -> ConfigError {
        let (source_name, document) = self
            .origin
            .get(key)
            .cloned()
            .unwrap_or_else(|| ("stored config".to_string(), 0));
        Located {
            object: self.set.objects[key].clone(),
            source_name,
            document,
        }
        .error(field, msg)
    }

    /// The Service a target names (`service` resolved in `key`'s namespace),
    /// which must exist and have `port` if one is given.
    fn target(
        &self,
        key: &ObjectKey,
        service: &str,
        port: Option<i64>,
    ) -> Result<(&'a ServiceSpec, String, String), ConfigError> {
        let (name, ns) = resolve_service_ref(service, &key.namespace);
        let Some(svc) = self.set.service(ns, name) else {
            return Err(self.error(
                key,
                "spec.target.service",
                format!("service \"{ns}/{name}\" not found (apply the Service first)"),
            ));
        };
        if let Some(p) = port {
            if !svc.ports.iter().any(|sp| sp.port == p) {
                return Err(self.error(
                    key,
                    "spec.target.port",
                    format!("service \"{ns}/{name}\" has no port {p}"),
                ));
            }
        }
        Ok((svc, ns.to_string(), name.to_string()))
    }

    /// Dead-letter queues exist in the queue's namespace, and following
    /// them never comes back to where it started.
    fn queues(&self) -> Result<(), ConfigError> {
        for (key, q) in self.set.queues() {
            let Some(dl) = &q.dead_letter else {
                continue;
            };
            let mut seen = vec![key.name.as_str()];
            let mut next = dl.queue.as_str();
            loop {
                let Some(target) = self.set.queue(&key.namespace, next) else {
                    return Err(self.error(
                        key,
                        "spec.deadLetter.queue",
                        format!(
                            "queue \"{}/{next}\" not found (apply the dead-letter Queue too)",
                            key.namespace
                        ),
                    ));
                };
                if seen.contains(&next) {
                    seen.push(next);
                    return Err(self.error(
                        key,
                        "spec.deadLetter.queue",
                        format!(
                            "dead letters would go round in a circle: {}",
                            seen.join(" -> ")
                        ),
                    ));
                }
                seen.push(next);
                match &target.dead_letter {
                    Some(d) => next = d.queue.as_str(),
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// The queues a QueuePolicy names exist in its namespace.
    fn queue_policies(&self) -> Result<(), ConfigError> {
        for (key, p) in self.set.queue_policies() {
            for (i, q) in p.queues.iter().enumerate() {
                if q != "*" && self.set.queue(&key.namespace, q).is_none() {
                    return Err(self.error(
                        key,
                        format!("spec.queues[{i}]"),
                        format!(
                            "queue \"{}/{q}\" not found (apply the Queue first)",
                            key.namespace
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// One default per namespace; targets exist.
    fn authorizations(&self) -> Result<(), ConfigError> {
        let mut defaults: BTreeMap<&str, &ObjectKey> = BTreeMap::new();
        for (key, a) in self.set.authorizations() {
            if a.target.is_none() {
                if let Some(other) = defaults.insert(key.namespace.as_str(), key) {
                    return Err(self.error(
                        key,
                        "spec.default",
                        format!(
                            "namespace \"{}\" already has a default in Authorization \"{}\"",
                            key.namespace, other.name
                        ),
                    ));
                }
            }
            if let Some(t) = &a.target {
                self.target(key, &t.service, t.port)?;
            }
        }
        Ok(())
    }

    /// Targets exist; at most one Policy per service (or service port).
    fn policies(&self) -> Result<(), ConfigError> {
        let mut targets: BTreeMap<(String, String, Option<i64>), &ObjectKey> = BTreeMap::new();
        for (key, p) in self.set.policies() {
            let (_, ns, name) = self.target(key, &p.target.service, p.target.port)?;
            if let Some(other) = targets.insert((ns, name, p.target.port), key) {
                return Err(self.error(
                    key,
                    "spec.target",
                    format!(
                        "Policy \"{}/{}\" already targets this service{}",
                        other.namespace,
                        other.name,
                        p.target
                            .port
                            .map(|p| format!(" port {p}"))
                            .unwrap_or_default()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Sources and destinations exist, TCP bind ports are free per
    /// namespace, HTTP rules go to HTTP ports, subsets select an endpoint.
    fn routes(&self) -> Result<(), ConfigError> {
        let mut bind_ports: BTreeMap<(String, i64), ObjectKey> = BTreeMap::new();
        for (key, route) in self.set.routes() {
            let ns = &key.namespace;
            for (i, s) in route.sources.iter().enumerate() {
                let (name, sns) = resolve_service_ref(s, ns);
                if self.set.service(sns, name).is_none() {
                    return Err(self.error(
                        key,
                        format!("spec.sources[{i}]"),
                        format!("service \"{sns}/{name}\" not found (apply the Service first)"),
                    ));
                }
            }
            if let Some(tcp) = &route.tcp {
                if let Some(other) = bind_ports.insert((ns.clone(), tcp.bind_port), key.clone()) {
                    return Err(self.error(
                        key,
                        "spec.tcp.bindPort",
                        format!(
                            "port {} is already bound by Route \"{}/{}\"",
                            tcp.bind_port, other.namespace, other.name
                        ),
                    ));
                }
            }
            for (field, d, http) in destinations(route) {
                self.destination(key, &field, &d, http)?;
            }
        }
        Ok(())
    }

    /// One destination of a Route.
    fn destination(
        &self,
        key: &ObjectKey,
        field: &str,
        d: &Destination,
        http: bool,
    ) -> Result<(), ConfigError> {
        let (name, dns) = resolve_service_ref(&d.service, &key.namespace);
        let Some(svc) = self.set.service(dns, name) else {
            return Err(self.error(
                key,
                format!("{field}.service"),
                format!("service \"{dns}/{name}\" not found (apply the Service first)"),
            ));
        };
        let Some(port) = svc.ports.iter().find(|p| p.port == d.port) else {
            let ports: Vec<String> = svc.ports.iter().map(|p| p.port.to_string()).collect();
            return Err(self.error(
                key,
                format!("{field}.port"),
                format!(
                    "service \"{dns}/{name}\" has no port {} (ports: {})",
                    d.port,
                    ports.join(", ")
                ),
            ));
        };
        if !d.subset.is_empty()
            && !svc.endpoints.is_empty()
            && !svc
                .endpoints
                .iter()
                .any(|e| d.subset.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
        {
            return Err(self.error(
                key,
                format!("{field}.subset"),
                format!("no endpoint of \"{dns}/{name}\" has labels {:?}", d.subset),
            ));
        }
        if http && !port.protocol.is_http() {
            return Err(self.error(
                key,
                format!("{field}.port"),
                format!("port {} of \"{dns}/{name}\" is {:?}; HTTP rules need an http, http2 or grpc port (use `tcp`)", d.port, port.protocol).to_lowercase(),
            ));
        }
        Ok(())
    }
}

/// Every destination of a route with its field path, and whether it is an
/// HTTP rule's (the TCP destination comes last).
fn destinations(route: &RouteSpec) -> Vec<(String, Destination, bool)> {
    let mut dests: Vec<(String, Destination, bool)> = route
        .http
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            r.destinations()
                .into_iter()
                .map(move |(f, d)| (format!("spec.http[{i}].{f}"), d, true))
        })
        .collect();
    if let Some(tcp) = &route.tcp {
        dests.push((
            "spec.tcp.destination".into(),
            tcp.destination.clone(),
            false,
        ));
    }
    dests
}
