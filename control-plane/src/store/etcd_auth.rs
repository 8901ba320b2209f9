//! etcd user/password authentication (`--etcd-user`): a token from
//! `Authenticate`, sent with every call, and taken again when etcd stops
//! accepting it (tokens do not survive an etcd restart, and expire when
//! unused).

use super::etcd::EtcdStore;
use super::StoreError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tonic::metadata::{Ascii, MetadataValue};
use xds_proto::etcd::{self as pb, auth_client::AuthClient};

/// The credentials and the current token.
#[derive(Default)]
pub struct EtcdAuth {
    user: Option<(String, String)>,
    token: RwLock<Option<MetadataValue<Ascii>>>,
    /// etcd refused the token: take a new one before the next call.
    stale: AtomicBool,
}

impl EtcdAuth {
    pub fn new(user: Option<(String, String)>) -> Arc<EtcdAuth> {
        Arc::new(EtcdAuth {
            user,
            ..Default::default()
        })
    }

    /// Adds the token to a request.
    pub fn sign<T>(&self, r: &mut tonic::Request<T>) {
        if let Some(t) = self.token.read().ok().and_then(|t| t.clone()) {
            r.metadata_mut().insert("token", t);
        }
    }

    /// Notes a refusal; true when it was the token (worth a new one).
    pub fn refused(&self, s: &tonic::Status) -> bool {
        let token = self.user.is_some() && s.code() == tonic::Code::Unauthenticated;
        if token {
            self.stale.store(true, Ordering::Relaxed);
        }
        token
    }

    pub fn stale(&self) -> bool {
        self.user.is_some() && self.stale.load(Ordering::Relaxed)
    }
}

impl EtcdStore {
    /// Takes a token for the configured user (nothing without one).
    pub(super) async fn authenticate(&self) -> Result<(), StoreError> {
        let Some((name, password)) = self.auth.user.clone() else {
            return Ok(());
        };
        let req = pb::AuthenticateRequest { name, password };
        let r = self
            .call_once(|ch| {
                let req = req.clone();
                async move { AuthClient::new(ch).authenticate(req).await }
            })
            .await?;
        let token = r.token.parse().map_err(|_| StoreError::Backend {
            path: self.describe.clone(),
            message: "etcd returned a token that is not ASCII".into(),
        })?;
        if let Ok(mut t) = self.auth.token.write() {
            *t = Some(token);
        }
        self.auth.stale.store(false, Ordering::Relaxed);
        tracing::info!(store = %self.describe, "authenticated to etcd");
        Ok(())
    }
}
