//! The operator API (`weft.v1.Admin`): apply / delete / get config and proxy
//! sync status. Config errors come back as INVALID_ARGUMENT with the message
//! naming file, document, object, field and reason.

use crate::config::Kind;
use crate::discovery::ProxyRegistry;
use crate::state::{ApplyError, ConfigState, Outcome};
use std::sync::Arc;
use tonic::{Request, Response, Status};
use xds_proto::v1::{self as pb, admin_server::Admin};

pub struct AdminService {
    state: Arc<ConfigState>,
    registry: Arc<ProxyRegistry>,
}

impl AdminService {
    pub fn new(state: Arc<ConfigState>, registry: Arc<ProxyRegistry>) -> Self {
        AdminService { state, registry }
    }
}

fn to_status(e: ApplyError) -> Status {
    match e {
        ApplyError::Config(e) => Status::invalid_argument(e.to_string()),
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
        let objects = config
            .objects
            .iter()
            .filter(|(k, _)| {
                k.kind == kind && (req.namespace.is_empty() || k.namespace == req.namespace)
            })
            .map(|(k, o)| pb::ConfigObject {
                kind: k.kind.as_str().to_string(),
                namespace: k.namespace.clone(),
                name: k.name.clone(),
                json: o.to_manifest().to_string(),
            })
            .collect();
        Ok(Response::new(pb::GetResponse {
            objects,
            revision: config.revision,
        }))
    }

    async fn proxy_status(
        &self,
        _req: Request<pb::ProxyStatusRequest>,
    ) -> Result<Response<pb::ProxyStatusResponse>, Status> {
        let revision = self.state.current().revision;
        let proxies = self
            .registry
            .snapshot()
            .iter()
            .map(|r| r.to_status())
            .collect();
        Ok(Response::new(pb::ProxyStatusResponse { proxies, revision }))
    }
}
