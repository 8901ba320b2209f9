//! The operator API (`weft.v1.Admin`): apply / delete / get config and proxy
//! sync status. Config errors come back as INVALID_ARGUMENT with the message
//! naming file, document, object, field and reason.

use crate::config::{Kind, ObjectKey};
use crate::join_token::{JoinTokens, DEFAULT_TOKEN_TTL};
use crate::proxy_status::ProxyRegistry;
use crate::state::{ApplyError, ConfigState, Outcome};
use crate::trust::Trust;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tonic::{Request, Response, Status};
use weft_certs::ca::CertificateAuthority;
use xds_proto::spiffe::SpiffeId;
use xds_proto::v1::{self as pb, admin_server::Admin};

pub struct AdminService {
    state: Arc<ConfigState>,
    registry: Arc<ProxyRegistry>,
    tokens: Arc<JoinTokens>,
    trust_domain: String,
    trust: Arc<Trust>,
    ca: Arc<arc_swap::ArcSwap<CertificateAuthority>>,
    replicas: Option<(Arc<crate::replicas::Replicas>, String)>,
    /// CA rotation through the shared store (several replicas).
    rotation: Option<Arc<crate::trust::SharedRotation>>,
}

impl AdminService {
    /// The replicas of this control plane and the store they share, for
    /// `ListControlPlanes`.
    pub fn with_replicas(
        mut self,
        replicas: Arc<crate::replicas::Replicas>,
        store: String,
    ) -> Self {
        self.replicas = Some((replicas, store));
        self
    }

    /// Rotates the CA through the shared store instead of this replica's
    /// files.
    pub fn with_shared_rotation(mut self, rotation: Arc<crate::trust::SharedRotation>) -> Self {
        self.rotation = Some(rotation);
        self
    }

    pub fn new(
        state: Arc<ConfigState>,
        registry: Arc<ProxyRegistry>,
        tokens: Arc<JoinTokens>,
        trust: Arc<Trust>,
        ca: Arc<arc_swap::ArcSwap<CertificateAuthority>>,
    ) -> Self {
        AdminService {
            state,
            registry,
            tokens,
            trust_domain: trust.current().trust_domain.clone(),
            trust,
            ca,
            replicas: None,
            rotation: None,
        }
    }

    fn ca_status(&self) -> pb::CaStatus {
        let st = self.trust.status();
        let infos: Vec<weft_mesh_tls::svid::CertInfo> = self
            .trust
            .current()
            .roots_pem
            .iter()
            .filter_map(|p| weft_mesh_tls::svid::certs_from_pem(p).ok())
            .flatten()
            .filter_map(|d| weft_mesh_tls::svid::inspect(&d).ok())
            .collect();
        let unix = xds_proto::units::unix_secs;
        pb::CaStatus {
            phase: st.phase,
            started_unix: st.started_unix,
            pending_proxies: st.pending,
            message: st.message,
            roots_sha256: infos.iter().map(|i| i.fingerprint_sha256.clone()).collect(),
            roots_not_after_unix: infos.iter().map(|i| unix(i.not_after)).collect(),
            issuer_not_after_unix: unix(self.ca.load().issuer_not_after()),
        }
    }
}

fn to_status(e: ApplyError) -> Status {
    match e {
        ApplyError::Config(e) => Status::invalid_argument(e.to_string()),
        ApplyError::Store(e @ crate::store::StoreError::Conflict { .. }) => {
            Status::aborted(format!("{e}; apply again"))
        }
        ApplyError::Store(e) => Status::unavailable(e.to_string()),
    }
}

fn results(outcomes: Vec<Outcome>) -> Vec<pb::ObjectResult> {
    outcomes
        .into_iter()
        .map(|o| pb::ObjectResult {
            kind: o.key.kind.as_str().to_string(),
            namespace: o.key.namespace,
            name: o.key.name,
            action: o.action.to_string(),
        })
        .collect()
}

fn documents(docs: Vec<pb::Document>) -> Vec<(String, String)> {
    docs.into_iter().map(|d| (d.source, d.yaml)).collect()
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_control_planes(
        &self,
        _req: Request<pb::ListControlPlanesRequest>,
    ) -> Result<Response<pb::ListControlPlanesResponse>, Status> {
        let Some((replicas, store)) = &self.replicas else {
            return Err(Status::unimplemented(
                "this control plane does not track replicas",
            ));
        };
        Ok(Response::new(pb::ListControlPlanesResponse {
            control_planes: replicas.list().await,
            store: store.clone(),
        }))
    }

    async fn rotate_ca(
        &self,
        _req: Request<pb::RotateCaRequest>,
    ) -> Result<Response<pb::CaStatus>, Status> {
        if let Some(rotation) = &self.rotation {
            rotation
                .begin()
                .await
                .map_err(Status::failed_precondition)?;
            tracing::info!("CA rotation started through the shared store");
            return Ok(Response::new(self.ca_status()));
        }
        self.trust
            .start_rotation(self.registry.clone())
            .map_err(Status::failed_precondition)?;
        tracing::info!("CA rotation started by the admin API");
        Ok(Response::new(self.ca_status()))
    }

    async fn get_ca_status(
        &self,
        _req: Request<pb::CaStatusRequest>,
    ) -> Result<Response<pb::CaStatus>, Status> {
        Ok(Response::new(self.ca_status()))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let req = req.into_inner();
        let id = SpiffeId::new(&self.trust_domain, &req.namespace, &req.service_account)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if weft_mesh_tls::identities::is_reserved(&id) {
            return Err(Status::invalid_argument(format!(
                "{id} is reserved for the mesh itself (weftctl and the control plane); choose another service account or namespace"
            )));
        }
        let ttl = match req.ttl_seconds {
            0 => DEFAULT_TOKEN_TTL,
            s => Duration::from_secs(s),
        };
        let now = SystemTime::now();
        let token = self
            .tokens
            .mint(&req.namespace, &req.service_account, ttl, now)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let expires = xds_proto::units::unix_secs(now + ttl);
        // The token itself is a secret: log who it is for, never its value.
        tracing::info!(identity = %id, ttl_secs = ttl.as_secs(), "join token created");
        Ok(Response::new(pb::CreateTokenResponse {
            token,
            expires_unix: expires,
            spiffe_id: id.to_string(),
        }))
    }

    async fn apply(
        &self,
        req: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let req = req.into_inner();
        let (outcomes, revision) = self
            .state
            .apply(&documents(req.documents), req.dry_run)
            .await
            .map_err(to_status)?;
        tracing::info!(
            revision,
            objects = outcomes.len(),
            dry_run = req.dry_run,
            "config applied"
        );
        Ok(Response::new(pb::ApplyResponse {
            results: results(outcomes),
            revision,
        }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let (outcomes, revision) = self
            .state
            .delete(&documents(req.into_inner().documents))
            .await
            .map_err(to_status)?;
        tracing::info!(revision, objects = outcomes.len(), "config deleted");
        Ok(Response::new(pb::DeleteResponse {
            results: results(outcomes),
            revision,
        }))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let req = req.into_inner();
        let kind = Kind::parse(&req.kind).ok_or_else(|| {
            Status::invalid_argument(format!(
                "unknown kind \"{}\" (expected Service or Route)",
                req.kind
            ))
        })?;
        let config = self.state.current();
        let page = page_of(&config, kind, &req)?;
        Ok(Response::new(page))
    }

    async fn proxy_status(
        &self,
        _req: Request<pb::ProxyStatusRequest>,
    ) -> Result<Response<pb::ProxyStatusResponse>, Status> {
        let revision = self.state.current().revision;
        let proxies = match &self.replicas {
            // Every replica's proxies, not only this one's.
            Some((replicas, _)) => replicas.proxy_status().await,
            None => self
                .registry
                .snapshot()
                .iter()
                .map(|r| r.to_status())
                .collect(),
        };
        Ok(Response::new(pb::ProxyStatusResponse {
            proxies,
            revision,
            registry_revision: self.state.publisher().registry().revision,
        }))
    }
}

/// Objects per `Get` page unless the request asks for fewer.
const DEFAULT_PAGE_SIZE: usize = 500;
/// A page ends before its objects pass this many bytes (well under the
/// 4 MiB gRPC message limit).
const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// One page of `kind` objects (of one namespace, or all), in key order,
/// starting after `req.page_token` ("namespace/name" of the last object of
/// the previous page).
fn page_of(
    config: &crate::config::ConfigSet,
    kind: Kind,
    req: &pb::GetRequest,
) -> Result<pb::GetResponse, Status> {
    use std::ops::Bound;
    let start = if req.page_token.is_empty() {
        // The smallest key of this kind.
        Bound::Included(ObjectKey {
            kind,
            namespace: String::new(),
            name: String::new(),
        })
    } else {
        let (namespace, name) = req.page_token.split_once('/').ok_or_else(|| {
            Status::invalid_argument(format!(
                "page_token \"{}\" is not namespace/name",
                req.page_token
            ))
        })?;
        Bound::Excluded(ObjectKey {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        })
    };
    let size = match req.page_size {
        0 => DEFAULT_PAGE_SIZE,
        n => (n as usize).min(DEFAULT_PAGE_SIZE),
    };
    let mut objects = Vec::new();
    let mut bytes = 0;
    let mut more = false;
    let matching = config
        .objects
        .range((start, Bound::Unbounded))
        .take_while(|(k, _)| k.kind == kind)
        .filter(|(k, _)| req.namespace.is_empty() || k.namespace == req.namespace);
    for (k, o) in matching {
        let json = o.to_manifest().to_string();
        let cost = json.len() + k.namespace.len() + k.name.len() + 16;
        if objects.len() == size || (!objects.is_empty() && bytes + cost > MAX_PAGE_BYTES) {
            more = true;
            break;
        }
        bytes += cost;
        objects.push(pb::ConfigObject {
            kind: k.kind.as_str().to_string(),
            namespace: k.namespace.clone(),
            name: k.name.clone(),
            json,
        });
    }
    let next_page_token = match objects.last() {
        Some(last) if more => format!("{}/{}", last.namespace, last.name),
        _ => String::new(),
    };
    Ok(pb::GetResponse {
        objects,
        revision: config.revision,
        next_page_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_documents, ConfigSet};

    fn config(services: usize) -> ConfigSet {
        let mut yaml = String::new();
        for i in 0..services {
            let ns = if i % 2 == 0 { "a" } else { "b" };
            yaml.push_str(&format!(
                "---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: s{i:05}, namespace: {ns}}}\nspec:\n  ports: [{{port: 80, protocol: http}}]\n"
            ));
        }
        // A Route sorts after every Service: it must never show up.
        yaml.push_str("---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {name: r, namespace: a}\nspec:\n  hosts: [s00000]\n  http: [{destination: {service: s00000, port: 80}}]\n");
        let mut set = ConfigSet {
            revision: 7,
            objects: Default::default(),
        };
        for l in parse_documents("t.yaml", &yaml).unwrap() {
            set.objects.insert(l.object.key(), l.object);
        }
        set
    }

    fn read_all(set: &ConfigSet, namespace: &str, page_size: u32) -> (Vec<String>, usize) {
        let (mut names, mut pages, mut token) = (Vec::new(), 0, String::new());
        loop {
            let page = page_of(
                set,
                Kind::Service,
                &pb::GetRequest {
                    kind: "Service".into(),
                    namespace: namespace.into(),
                    page_size,
                    page_token: token,
                },
            )
            .unwrap();
            assert_eq!(page.revision, 7);
            pages += 1;
            names.extend(
                page.objects
                    .iter()
                    .map(|o| format!("{}/{}", o.namespace, o.name)),
            );
            if page.next_page_token.is_empty() {
                return (names, pages);
            }
            token = page.next_page_token;
        }
    }

    #[test]
    fn get_pages_through_every_object_of_the_kind_once_in_order() {
        let set = config(1203);
        let (names, pages) = read_all(&set, "", 0);
        assert_eq!(names.len(), 1203);
        assert_eq!(pages, 3, "500 per page by default");
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, names, "key order, no repeats");
        let (b, _) = read_all(&set, "b", 100);
        assert_eq!(b.len(), 601);
        assert!(b.iter().all(|n| n.starts_with("b/")));
        let bad = page_of(
            &set,
            Kind::Service,
            &pb::GetRequest {
                kind: "Service".into(),
                page_token: "no-slash".into(),
                ..Default::default()
            },
        );
        assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
