//! Config-push benchmark: N simulated proxies speaking the real discovery
//! protocol over real gRPC streams (100 streams per HTTP/2 connection) ACK
//! every push; we time `Admin.Apply` → each proxy's ACK.

use anyhow::{anyhow, Context};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_mesh_tls::admin_client::AdminAuth;
use weft_mesh_tls::channel::ControlPlane;
use xds_proto::type_url;
use xds_proto::v1::{self as pb, discovery_client::DiscoveryClient};

const STREAMS_PER_CONNECTION: usize = 100;

/// (sim index, version acked, when)
type AckEvent = (usize, String, Instant);

pub struct Sims {
    acks_tx: mpsc::UnboundedSender<AckEvent>,
    acks: mpsc::UnboundedReceiver<AckEvent>,
    pub count: usize,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Default for Sims {
    fn default() -> Self {
        let (acks_tx, acks) = mpsc::unbounded_channel();
        Sims {
            acks_tx,
            acks,
            count: 0,
            tasks: vec![],
        }
    }
}

impl Drop for Sims {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Sims {
    /// The next ACK (proxy index, version, when) before `deadline`.
    pub async fn next_ack(&mut self, deadline: tokio::time::Instant) -> Option<AckEvent> {
        tokio::time::timeout_at(deadline, self.acks.recv())
            .await
            .ok()
            .flatten()
    }

    /// Forgets the ACKs received so far.
    pub fn clear_acks(&mut self) {
        while self.acks.try_recv().is_ok() {}
    }

    /// Connects `n` more simulated proxies of service `sim-client` in
    /// namespace `sim`; returns once each of them has ACKed its first push.
    /// Each HTTP/2 connection is mTLS with `cp`'s certificate (a real
    /// workload certificate for sim/sim-client).
    pub async fn add(&mut self, cp: &ControlPlane, cp_url: &str, n: usize) -> anyhow::Result<()> {
        let first = self.count;
        let mut channel = None;
        for i in first..first + n {
            if channel.is_none() || (i - first).is_multiple_of(STREAMS_PER_CONNECTION) {
                channel = Some(
                    cp.connect(cp_url, Duration::from_secs(10))
                        .await
                        .with_context(|| format!("connect {cp_url}"))?,
                );
            }
            let mut client =
                DiscoveryClient::new(channel.clone().ok_or_else(|| anyhow!("no channel"))?);
            let ack_tx = self.acks_tx.clone();
            self.tasks.push(tokio::spawn(async move {
                let (tx, rx) = mpsc::channel(4);
                let hello = pb::DiscoveryRequest {
                    node: Some(pb::Node {
                        name: format!("sim-{i}"),
                        namespace: "sim".into(),
                        service: "sim-client".into(),
                        ..Default::default()
                    }),
                    subscribe: type_url::SUPPORTED.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                };
                if tx.send(hello).await.is_err() {
                    return;
                }
                let Ok(resp) = client.stream(ReceiverStream::new(rx)).await else {
                    return;
                };
                let mut pushes = resp.into_inner();
                while let Ok(Some(push)) = pushes.message().await {
                    let at = Instant::now();
                    let ack = pb::DiscoveryRequest {
                        response_nonce: push.nonce,
                        version: push.version.clone(),
                        ..Default::default()
                    };
                    if tx.send(ack).await.is_err() {
                        return;
                    }
                    let _ = ack_tx.send((i, push.version, at));
                }
            }));
        }
        let mut seen = vec![false; n];
        let mut count = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        while count < n {
            let (i, _, _) = tokio::time::timeout_at(deadline, self.acks.recv())
                .await
                .map_err(|_| anyhow!("only {count}/{n} simulated proxies got their first push"))?
                .ok_or_else(|| anyhow!("simulators ended"))?;
            if i >= first && !seen[i - first] {
                seen[i - first] = true;
                count += 1;
            }
        }
        self.count += n;
        Ok(())
    }
}

pub fn config_yaml(round: usize) -> String {
    // Changing the endpoint list changes every simulated proxy's resources.
    format!(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: sim-server, namespace: sim}}\nspec:\n  ports: [{{port: 8080, protocol: http}}]\n  endpoints: [{{address: \"10.1.{}.{}\"}}]\n---\napiVersion: weft.dev/v1\nkind: Route\nmetadata: {{name: sim, namespace: sim}}\nspec:\n  hosts: [sim-server]\n  http: [{{destination: {{service: sim-server, port: 8080}}}}]\n",
        round / 250,
        round % 250 + 1
    )
}

/// Applies a change and returns, per simulated proxy, apply → ACK.
pub async fn apply_and_wait(
    cp_url: &str,
    admin_auth: &AdminAuth,
    sims: &mut Sims,
    round: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut admin = weft_mesh_tls::admin_client::admin_client(cp_url, admin_auth).await?;
    while sims.acks.try_recv().is_ok() {}
    let started = Instant::now();
    let rev = admin
        .apply(pb::ApplyRequest {
            documents: vec![pb::Document {
                source: "push-bench.yaml".into(),
                yaml: config_yaml(round),
            }],
            dry_run: false,
        })
        .await
        .map_err(|e| anyhow!("apply: {}", e.message()))?
        .into_inner()
        .revision;
    // Versions are r<config>.<registry>.
    let want = format!("r{rev}.");
    let mut got = vec![None; sims.count];
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count < sims.count {
        let (i, version, at) = tokio::time::timeout_at(deadline, sims.acks.recv())
            .await
            .map_err(|_| anyhow!("{count}/{} proxies ACKed {want} within 60s", sims.count))?
            .ok_or_else(|| anyhow!("simulators ended"))?;
        if version.starts_with(&want) && got[i].is_none() {
            got[i] = Some(at.duration_since(started));
            count += 1;
        }
    }
    Ok(got.into_iter().flatten().collect())
}

/// A join token for namespace `sim` from the Admin API.
async fn sim_token(
    cp_url: &str,
    admin_auth: &AdminAuth,
    service_account: &str,
) -> anyhow::Result<pb::CreateTokenResponse> {
    let mut admin = weft_mesh_tls::admin_client::admin_client(cp_url, admin_auth).await?;
    Ok(admin
        .create_token(pb::CreateTokenRequest {
            namespace: "sim".into(),
            service_account: service_account.into(),
            ttl_seconds: 3600,
        })
        .await
        .map_err(|e| anyhow!("create token: {}", e.message()))?
        .into_inner())
}

/// A real workload certificate for the simulated proxies: a join token from
/// the Admin API traded for a certificate through Identity.Certify, exactly
/// as a sidecar bootstraps.
pub async fn sim_identity(
    cp_url: &str,
    admin_auth: &AdminAuth,
    ca_bundle: &std::path::Path,
) -> anyhow::Result<ControlPlane> {
    let token = sim_token(cp_url, admin_auth, "sim-client").await?;
    let id: weft_mesh_tls::SpiffeId = token.spiffe_id.parse()?;
    let bundle = std::fs::read_to_string(ca_bundle)
        .with_context(|| format!("read {}", ca_bundle.display()))?;
    let identity = weft_proxy::identity::WorkloadIdentity::new(
        id,
        "sim".into(),
        cp_url.to_string(),
        weft_proxy::identity::Credential::Token(token.token),
        &bundle,
    )?;
    tokio::time::timeout(Duration::from_secs(30), identity.bootstrap())
        .await
        .map_err(|_| anyhow!("no workload certificate for the simulated proxies within 30s"))?;
    Ok(identity.control_plane())
}

/// Certificate signings per second: `concurrency` callers send CSRs with a
/// join token for `duration`; every request is a real ECDSA signature.
pub async fn csr_rate(
    cp_url: &str,
    admin_auth: &AdminAuth,
    ca_bundle: &std::path::Path,
    duration: Duration,
    concurrency: usize,
) -> anyhow::Result<f64> {
    use xds_proto::v1::identity_client::IdentityClient;
    let token = sim_token(cp_url, admin_auth, "csr-bench").await?;
    let (csr, _key) = weft_mesh_tls::svid::csr_for(&token.spiffe_id.parse()?)?;
    let bundle = std::fs::read_to_string(ca_bundle)?;
    let bundle = std::sync::Arc::new(weft_mesh_tls::tls::TrustBundle::new(&[bundle])?);
    let channel = ControlPlane::tls_no_client_cert(bundle)
        .connect(cp_url, Duration::from_secs(10))
        .await?;
    let deadline = tokio::time::Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut client = IdentityClient::new(channel.clone());
        let (csr, token) = (csr.clone(), token.token.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while tokio::time::Instant::now() < deadline {
                let r = client
                    .certify(pb::CertifyRequest {
                        csr_pem: csr.clone(),
                        token: token.clone(),
                        ttl_seconds: 60,
                        node: String::new(),
                    })
                    .await;
                if r.is_ok() {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}
