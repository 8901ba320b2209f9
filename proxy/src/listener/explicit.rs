//! Explicit-mode outbound TCP listeners (like Consul upstreams): the control
//! plane assigns a local port per TCP destination, so apps reach opaque
//! services on loopback without iptables. Ports are bound before a push is
//! ACKed; a port that cannot be bound makes the push a NACK.

use super::Context;
use crate::snapshot::TcpListenerSpec;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;

pub struct ExplicitListeners {
    ip: IpAddr,
    runtime: tokio::runtime::Handle,
    running: Mutex<HashMap<u16, oneshot::Sender<()>>>,
    ctx: Mutex<Option<Arc<Context>>>,
}

/// Sockets bound for a push that has not been committed yet.
pub struct Prepared {
    bound: Vec<(u16, TcpListener)>,
    desired: Vec<u16>,
}

impl ExplicitListeners {
    pub fn new(ip: IpAddr, runtime: tokio::runtime::Handle) -> Self {
        ExplicitListeners {
            ip,
            runtime,
            running: Mutex::new(HashMap::new()),
            ctx: Mutex::new(None),
        }
    }

    pub fn set_context(&self, ctx: Arc<Context>) {
        if let Ok(mut c) = self.ctx.lock() {
            *c = Some(ctx);
        }
    }

    fn bind(&self, port: u16) -> std::io::Result<TcpListener> {
        let _rt = self.runtime.enter();
        let addr = SocketAddr::new(self.ip, port);
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(1024)
    }

    /// Binds every listener of `desired` not already running.
    pub fn prepare(&self, desired: &[TcpListenerSpec]) -> Result<Prepared, String> {
        let running: Vec<u16> = self
            .running
            .lock()
            .map(|r| r.keys().copied().collect())
            .unwrap_or_default();
        let mut bound = Vec::new();
        for spec in desired {
            if running.contains(&spec.bind_port) {
                continue;
            }
            match self.bind(spec.bind_port) {
                Ok(l) => bound.push((spec.bind_port, l)),
                Err(e) => {
                    return Err(format!(
                        "listener \"{}\": cannot bind {}:{}: {e}",
                        spec.name, self.ip, spec.bind_port
                    ))
                }
            }
        }
        Ok(Prepared {
            bound,
            desired: desired.iter().map(|s| s.bind_port).collect(),
        })
    }

    /// Starts the prepared listeners and stops the ones no longer wanted.
    /// Call after the new snapshot is published (handlers read it).
    pub fn commit(&self, prepared: Prepared) {
        let Some(ctx) = self.ctx.lock().ok().and_then(|c| c.clone()) else {
            return;
        };
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        running.retain(|port, _| prepared.desired.contains(port));
        for (port, listener) in prepared.bound {
            let (stop_tx, stop_rx) = oneshot::channel();
            running.insert(port, stop_tx);
            let ctx = ctx.clone();
            tracing::info!(ip = %self.ip, port, "explicit tcp listener started");
            self.runtime.spawn(async move {
                tokio::select! {
                    _ = super::accept_loop(listener, ctx.clone(), "explicit-tcp", ctx.outbound_cap.clone(), move |ctx, stream, _peer| handle(ctx, stream, port)) => {}
                    _ = stop_rx => tracing::info!(port, "explicit tcp listener stopped"),
                }
            });
        }
    }
}

async fn handle(ctx: Arc<Context>, stream: tokio::net::TcpStream, port: u16) {
    let snapshot = ctx.snapshot.load_full();
    let target = snapshot
        .tcp_listeners
        .iter()
        .find(|l| l.bind_port == port)
        .and_then(|l| snapshot.cluster(&l.cluster))
        .and_then(|c| c.pick_with_identity());
    let Some((target, identity)) = target else {
        tracing::debug!(port, "explicit listener has no endpoint; closing");
        return;
    };
    ctx.forward_tcp("explicit", stream, target, identity.as_deref())
        .await;
}
