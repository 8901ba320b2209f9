//! Serves an HTTP/2 client connection (h2c by prior knowledge, h2 over
//! TLS) with the `h2` crate. Every stream is served on the connection's own
//! task: its request goes to the handler, its response head and body back
//! into the stream, while the task keeps reading frames and accepting
//! streams. hyper's server spawned a task per stream and moved each request
//! and response through its dispatcher (see benches/RESULTS.md).
//!
//! What hyper's server did and this keeps: its settings (1 MiB windows, 200
//! concurrent streams, 400 KiB send buffer, the rapid-reset guard), a PING
//! every keepalive interval with the connection dropped when none is
//! answered in time, a stream the client resets dropping its request (and
//! so its upstream stream), connection headers dropped from responses, a
//! `content-length` for a body of known length and a `date` when the
//! response has none, and a graceful close (GOAWAY, in-flight streams
//! finish) when asked.

use crate::http::body::{RecvBody, ResponseBody};
use crate::http::h2_stream::{send_body, H2Body};
use crate::http::headers::strip_hop_by_hop;
use crate::http::idle::Activity;
use crate::http::limits::{KEEPALIVE_ACK, MAX_HEADER_LIST_BYTES};
use bytes::Bytes;
use futures::future::poll_fn;
use futures::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::{Ping, RecvStream};
use http::header::{HeaderValue, CONTENT_LENGTH, DATE, TE};
use http::{Request, Response};
use hyper::body::Body;
use std::cell::RefCell;
use std::future::Future;
use std::pin::pin;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Sleep;

/// The HTTP/2 preface a client opens with (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper's server defaults, kept.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
const MAX_CONCURRENT_STREAMS: u32 = 200;
const MAX_SEND_BUFFER: usize = 400 * 1024;
/// Streams a client may make the server reset (malformed ones) before
/// the connection is closed (CVE-2023-44487-style floods).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Why a connection stops being served from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Finish what is in flight and close (GOAWAY), however long it takes.
    Drain,
    /// Ask the client to go (GOAWAY) and drop it after this long.
    Idle(Duration),
}

/// Why serving an HTTP/2 connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum H2ServeError {
    #[error("http/2: {0}")]
    H2(#[from] h2::Error),
    #[error("http/2: the client answered no PING within {0:?}")]
    KeepaliveTimeout(Duration),
}

/// Serves `io` (whose first bytes are the preface) until the client closes
/// it, it fails, or `stop` resolves and the close it asks for completes.
/// `handle` answers each request; `activity` counts the requests in flight.
pub async fn serve<I, H, F>(
    io: I,
    keepalive: Duration,
    activity: Arc<Activity>,
    handle: H,
    stop: impl Future<Output = Stop>,
) -> Result<(), H2ServeError>
where
    I: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Request<RecvBody>) -> F,
    F: Future<Output = Response<ResponseBody>>,
{
    let mut stop = pin!(stop);
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .handshake::<_, Bytes>(io);
    let mut conn = tokio::select! {
        c = handshake => c?,
        // Nothing was asked yet: nothing to finish.
        _ = stop.as_mut() => return Ok(()),
    };
    let mut pings = pin!(keepalive_pings(conn.ping_pong(), keepalive));
    let mut streams = FuturesUnordered::new();
    let mut stopping = false;
    // When a connection asked to go (idle) is dropped if it has not.
    let mut grace: Option<Pin<Box<Sleep>>> = None;
    poll_fn(|cx| {
        if !stopping {
            if let Poll::Ready(how) = stop.as_mut().poll(cx) {
                stopping = true;
                conn.graceful_shutdown();
                if let Stop::Idle(after) = how {
                    grace = Some(Box::pin(tokio::time::sleep(after)));
                }
            }
        }
        if grace
            .as_mut()
            .is_some_and(|g| g.as_mut().poll(cx).is_ready())
        {
            return Poll::Ready(Ok(()));
        }
        if let Poll::Ready(e) = pings.as_mut().poll(cx) {
            return Poll::Ready(Err(e));
        }
        loop {
            // Every stream that can move first (their responses queue into
            // the connection)...
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
            // ...then the connection: frames read, new streams taken, and
            // what the streams queued written in one go.
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    let in_flight = activity.start();
                    let resp = handle(request(req));
                    streams.push(async move {
                        answer(resp, respond).await;
                        drop(in_flight);
                    });
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                // Closed: by the client, or after GOAWAY once every stream
                // finished.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// Sends a PING every `interval` and resolves with an error once one is
/// not answered within `KEEPALIVE_ACK` (the connection is then dropped).
async fn keepalive_pings(ping_pong: Option<h2::PingPong>, interval: Duration) -> H2ServeError {
    let Some(mut ping_pong) = ping_pong else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(KEEPALIVE_ACK, ping_pong.ping(Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return e.into(),
            Err(_) => return H2ServeError::KeepaliveTimeout(KEEPALIVE_ACK),
        }
    }
}

fn request(req: Request<RecvStream>) -> Request<RecvBody> {
    let (parts, recv) = req.into_parts();
    let body = H2Body::request(recv, &parts.headers);
    Request::from_parts(parts, RecvBody::H2(body))
}

/// Waits for the handler's response, unless the client resets the stream
/// first (then the request is dropped), and sends it.
async fn answer<F>(resp: F, mut respond: SendResponse<Bytes>)
where
    F: Future<Output = Response<ResponseBody>>,
{
    let mut resp = pin!(resp);
    let resp = poll_fn(|cx| {
        if let Poll::Ready(r) = resp.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        match respond.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    let Some(resp) = resp else {
        tracing::debug!("client reset the stream before its response");
        return;
    };
    let (mut parts, body) = resp.into_parts();
    // h2 refuses connection-specific fields in a response.
    strip_hop_by_hop(&mut parts.headers, false);
    parts.headers.remove(TE);
    if !parts.headers.contains_key(DATE) {
        if let Some(now) = http_date() {
            parts.headers.insert(DATE, now);
        }
    }
    let end = body.is_end_stream();
    if !end {
        if let Some(len) = body.size_hint().exact() {
            if !parts.headers.contains_key(CONTENT_LENGTH) {
                parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
            }
        }
    }
    let tx = match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(tx) => tx,
        Err(e) => {
            tracing::debug!(error = %e, "response head not sent");
            return;
        }
    };
    if !end {
        send_body(body, tx).await;
    }
}

thread_local! {
    /// This thread's `date` value and the second it was made for.
    static NOW: RefCell<Option<(u64, HeaderValue)>> = const { RefCell::new(None) };
}

/// The current time as an HTTP date, made once a second per thread.
fn http_date() -> Option<HeaderValue> {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    NOW.with(|d| {
        let mut d = d.borrow_mut();
        match &*d {
            Some((at, v)) if *at == secs => Some(v.clone()),
            _ => {
                let v = HeaderValue::from_str(&httpdate::fmt_http_date(now)).ok()?;
                *d = Some((secs, v.clone()));
                Some(v)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::body::Held;
    use http::HeaderMap;
    use http_body_util::BodyExt;
    use std::net::SocketAddr;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{oneshot, Barrier};
    use tokio::task::JoinHandle;

    /// Serves one connection on a loopback port with `handle`; sending on
    /// the returned channel stops it as told.
    async fn server<H, F>(
        keepalive: Duration,
        handle: H,
    ) -> (SocketAddr, oneshot::Sender<Stop>, JoinHandle<bool>)
    where
        H: Fn(Request<RecvBody>) -> F + Send + Sync + 'static,
        F: Future<Output = Response<ResponseBody>> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel();
        let served = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let stop = async move {
                match stop_rx.await {
                    Ok(how) => how,
                    Err(_) => std::future::pending().await,
                }
            };
            serve(tcp, keepalive, Activity::new(), handle, stop)
                .await
                .is_ok()
        });
        (addr, stop_tx, served)
    }

    async fn client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (send, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        send
    }

    fn get() -> Request<()> {
        Request::get("http://svc.test/").body(()).unwrap()
    }

    fn echo(req: Request<RecvBody>) -> Response<ResponseBody> {
        let body = ResponseBody::upstream(req.into_body(), Held::default(), None, None);
        Response::new(body)
    }

    async fn read(resp: h2::client::ResponseFuture) -> (http::response::Parts, Bytes) {
        let (parts, mut body) = resp.await.unwrap().into_parts();
        let mut all = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            all.extend_from_slice(&chunk);
        }
        (parts, Bytes::from(all))
    }

    #[tokio::test]
    async fn streams_of_one_connection_are_served_concurrently_with_length_and_date() {
        // Every handler waits for all ten: served one after another, none
        // would finish.
        let all_in = Arc::new(Barrier::new(10));
        let (addr, _stop, _) = server(Duration::from_secs(30), move |_req| {
            let all_in = all_in.clone();
            async move {
                all_in.wait().await;
                Response::new(ResponseBody::local(Bytes::from_static(b"ok")))
            }
        })
        .await;
        let mut send = client(addr).await;
        let mut responses = Vec::new();
        for _ in 0..10 {
            send = send.ready().await.unwrap();
            let (resp, _) = send.send_request(get(), true).unwrap();
            responses.push(tokio::spawn(read(resp)));
        }
        for r in responses {
            let (parts, body) = tokio::time::timeout(Duration::from_secs(5), r)
                .await
                .expect("all ten answered")
                .unwrap();
            assert_eq!(parts.status, 200);
            assert_eq!(&body[..], b"ok");
            assert_eq!(parts.headers[CONTENT_LENGTH], "2");
            assert!(httpdate::parse_http_date(parts.headers[DATE].to_str().unwrap()).is_ok());
        }
    }

    #[tokio::test]
    async fn a_streamed_request_body_and_its_trailers_reach_the_handler() {
        let (addr, _stop, _) = server(Duration::from_secs(30), |req| async { echo(req) }).await;
        let mut send = client(addr).await.ready().await.unwrap();
        let (resp, mut body) = send
            .send_request(Request::post("http://svc.test/").body(()).unwrap(), false)
            .unwrap();
        body.send_data(Bytes::from_static(b"hello "), false)
            .unwrap();
        body.send_data(Bytes::from_static(b"world"), false).unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        body.send_trailers(trailers).unwrap();
        let (parts, mut recv) = resp.await.unwrap().into_parts();
        assert_eq!(parts.status, 200);
        let mut all = Vec::new();
        while let Some(chunk) = recv.data().await {
            all.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(&all[..], b"hello world");
        let t = recv.trailers().await.unwrap().expect("trailers");
        assert_eq!(t["grpc-status"], "0");
    }

    /// Drops send on their drop.
    struct Dropped(Option<oneshot::Sender<()>>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }

    #[tokio::test]
    async fn a_stream_the_client_resets_drops_its_request() {
        let (dropped_tx, dropped_rx) = oneshot::channel();
        let dropped_tx = std::sync::Mutex::new(Some(dropped_tx));
        let (addr, _stop, _) = server(Duration::from_secs(30), move |_req| {
            let guard = Dropped(dropped_tx.lock().unwrap().take());
            async move {
                let _guard = guard;
                std::future::pending::<Response<ResponseBody>>().await
            }
        })
        .await;
        let mut send = client(addr).await.ready().await.unwrap();
        let (_resp, mut body) = send.send_request(get(), false).unwrap();
        body.send_data(Bytes::from_static(b"x"), false).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        body.send_reset(h2::Reason::CANCEL);
        tokio::time::timeout(Duration::from_secs(5), dropped_rx)
            .await
            .expect("the request was dropped")
            .unwrap();
    }

    #[tokio::test]
    async fn a_request_body_cut_by_a_client_reset_fails_instead_of_ending() {
        let (seen_tx, seen_rx) = oneshot::channel();
        let seen_tx = std::sync::Mutex::new(Some(seen_tx));
        let (addr, _stop, _) = server(Duration::from_secs(30), move |req: Request<RecvBody>| {
            let seen = seen_tx.lock().unwrap().take();
            async move {
                let read = req.into_body().collect().await;
                if let Some(seen) = seen {
                    let _ = seen.send(read.is_err());
                }
                Response::new(ResponseBody::local(Bytes::new()))
            }
        })
        .await;
        let mut send = client(addr).await.ready().await.unwrap();
        let (_resp, mut body) = send.send_request(get(), false).unwrap();
        body.send_data(Bytes::from_static(b"half"), false).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        body.send_reset(h2::Reason::CANCEL);
        let failed = tokio::time::timeout(Duration::from_secs(5), seen_rx)
            .await
            .expect("the handler saw the body end")
            .unwrap();
        assert!(failed, "a cancelled upload must not read as complete");
    }

    #[tokio::test]
    async fn connection_headers_are_dropped_from_responses() {
        let (addr, _stop, _) = server(Duration::from_secs(30), |_req| async {
            Response::builder()
                .header("connection", "x-hop")
                .header("x-hop", "1")
                .header("keep-alive", "timeout=5")
                .header("transfer-encoding", "chunked")
                .header("te", "trailers")
                .header("x-kept", "yes")
                .body(ResponseBody::local(Bytes::from_static(b"body")))
                .unwrap()
        })
        .await;
        let mut send = client(addr).await.ready().await.unwrap();
        let (resp, _) = send.send_request(get(), true).unwrap();
        let (parts, body) = read(resp).await;
        assert_eq!(parts.status, 200);
        assert_eq!(&body[..], b"body");
        assert_eq!(parts.headers["x-kept"], "yes");
        for gone in [
            "connection",
            "x-hop",
            "keep-alive",
            "transfer-encoding",
            "te",
        ] {
            assert!(!parts.headers.contains_key(gone), "{gone} sent");
        }
    }

    #[tokio::test]
    async fn a_drain_lets_the_stream_in_flight_finish_then_closes() {
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let release_rx = std::sync::Mutex::new(Some(release_rx));
        let (addr, stop, served) = server(Duration::from_secs(30), move |_req| {
            let release = release_rx.lock().unwrap().take();
            async move {
                if let Some(r) = release {
                    let _ = r.await;
                }
                Response::new(ResponseBody::local(Bytes::from_static(b"late")))
            }
        })
        .await;
        let mut send = client(addr).await.ready().await.unwrap();
        let (resp, _) = send.send_request(get(), true).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.send(Stop::Drain).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!served.is_finished(), "closed with a stream in flight");
        release_tx.send(()).unwrap();
        let (parts, body) = read(resp).await;
        assert_eq!(
            (parts.status, &body[..]),
            (http::StatusCode::OK, &b"late"[..])
        );
        let clean = tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("closed after its last stream")
            .unwrap();
        assert!(clean);
    }

    #[tokio::test]
    async fn a_client_that_answers_pings_is_kept() {
        let (addr, _stop, served) =
            server(Duration::from_millis(20), |req| async { echo(req) }).await;
        let send = client(addr).await;
        // Several keepalive rounds, each answered by the client's h2.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!served.is_finished());
        let mut send = send.ready().await.unwrap();
        let (resp, _) = send.send_request(get(), true).unwrap();
        assert_eq!(read(resp).await.0.status, 200);
    }
}
