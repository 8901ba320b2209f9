//! Data-plane workers: each runs its own current-thread runtime with its
//! own outbound and inbound listeners and its own HTTP servers (so its own
//! upstream connection pools), and shares only the config snapshot, the
//! drain, the connection caps and the metrics with the others. Connections
//! never move between workers: the kernel spreads them at accept
//! (`SO_REUSEPORT`, one listening socket per worker on the same address),
//! and every wakeup of a connection stays on the thread that owns it.
//!
//! A multi-thread tokio runtime was measured losing a third of the
//! requests per CPU-second at two workers (work stealing and cross-thread
//! wakeups; benches/RESULTS.md "Workers").

use super::{accept_loop, inbound, outbound, Context};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Pending connections per listening socket (tokio's own default).
const BACKLOG: i32 = 1024;

/// `workers` listening sockets on `addr`: one plain socket for a single
/// worker; with more, each with `SO_REUSEPORT` so the kernel spreads new
/// connections over them. Port 0 is resolved by the first socket and the
/// others bind the port it got.
pub fn bind(addr: SocketAddr, workers: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(workers.max(1));
    let mut at = addr;
    for _ in 0..workers.max(1) {
        let s = Socket::new(Domain::for_address(at), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        if workers > 1 {
            s.set_reuse_port(true)?;
        }
        s.set_nonblocking(true)?;
        s.bind(&at.into())?;
        s.listen(BACKLOG)?;
        let l: std::net::TcpListener = s.into();
        at = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// Starts the outbound and inbound accept loops of one worker on the
/// current runtime; they stop accepting when the drain starts.
pub fn accept(ctx: &Arc<Context>, outbound_l: TcpListener, inbound_l: TcpListener) {
    tokio::spawn(accept_loop(
        outbound_l,
        ctx.clone(),
        "outbound",
        ctx.outbound_cap.clone(),
        outbound::handle,
    ));
    tokio::spawn(accept_loop(
        inbound_l,
        ctx.clone(),
        "inbound",
        ctx.inbound_cap.clone(),
        inbound::handle,
    ));
}

/// Runs worker `index` on its own thread and current-thread runtime,
/// serving `ctx` on the two listeners until the process exits (the main
/// worker waits for the drain; connections here are counted in it).
pub fn spawn(
    index: usize,
    ctx: Arc<Context>,
    outbound_l: std::net::TcpListener,
    inbound_l: std::net::TcpListener,
) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("weft-data-{index}"))
        .spawn(move || {
            rt.block_on(async move {
                match (
                    TcpListener::from_std(outbound_l),
                    TcpListener::from_std(inbound_l),
                ) {
                    (Ok(o), Ok(i)) => accept(&ctx, o, i),
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::error!(worker = index, error = %e, "worker cannot register its listeners; it serves nothing");
                    }
                }
                std::future::pending::<()>().await
            })
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_share_one_port_and_a_single_worker_keeps_it_exclusive() {
        let four = bind("127.0.0.1:0".parse().expect("addr"), 4).expect("bind four");
        let ports: Vec<u16> = four
            .iter()
            .map(|l| l.local_addr().expect("addr").port())
            .collect();
        assert!(ports.iter().all(|p| *p == ports[0] && *p != 0), "{ports:?}");
        let one = bind("127.0.0.1:0".parse().expect("addr"), 1).expect("bind one");
        let taken = one[0].local_addr().expect("addr");
        // Without SO_REUSEPORT on the first socket, nobody can share it:
        // a second proxy on the same port is refused, not silently spread.
        assert!(bind(taken, 1).is_err());
        assert!(bind(taken, 2).is_err());
    }
}
