//! SO_ORIGINAL_DST: the address an iptables-redirected connection was headed
//! for, read through socket2 (which wraps the getsockopt), so the proxy has
//! no unsafe code of its own.

use socket2::SockRef;
use std::net::SocketAddr;
use std::os::fd::AsFd;

/// The original destination of an intercepted connection, or None when the
/// connection was not redirected (or the kernel has no record of it).
pub fn original_dst<S: AsFd>(socket: &S, local: SocketAddr) -> Option<SocketAddr> {
    let sock = SockRef::from(socket);
    let found = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    let found = found.ok()?.as_socket()?;
    (found != local).then_some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plain_connection_has_no_original_destination() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        assert_eq!(original_dst(&s, s.local_addr().unwrap()), None);
    }
}
