//! HTTP/1.1 message heads as the fast path reads and writes them: parsed
//! with `httparse` in place (fields are ranges into the read buffer, no
//! copies), checked strictly, and written back out without the
//! connection-level (hop-by-hop) fields.
//!
//! A request head is taken only when it is the plain case: HTTP/1.1,
//! origin-form target, exactly one Host, framing by at most one
//! Content-Length or by `Transfer-Encoding: chunked` alone, `Connection`
//! saying only keep-alive/close, no upgrade, `Expect`, `TE`, h2c settings
//! or gRPC. Anything else, malformed heads included, is `Fallback`: the
//! connection goes to hyper, which answers it as it always has (400, 431,
//! upgrades, 100-continue...). A response head from the upstream is taken
//! unless its framing is contradictory (`Invalid`: the request fails with
//! 502, as with hyper).

use std::ops::Range;

/// Most header fields in one head (hyper's default, which the fallback
/// applies too).
pub const MAX_HEADERS: usize = 100;

/// Where a message body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding (the chunks and trailers are forwarded as
    /// they are).
    Chunked,
    /// Until the sender closes (responses only).
    Close,
}

/// One header field kept for forwarding: name and value, as byte ranges of
/// the buffer the head was parsed from.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// A request head the fast path forwards.
#[derive(Debug)]
pub struct RequestHead {
    /// Bytes of the head, the blank line included.
    pub len: usize,
    pub method: http::Method,
    pub method_at: Range<usize>,
    /// Path and query (origin form).
    pub target: Range<usize>,
    pub host: Range<usize>,
    pub framing: Framing,
    /// The client asked to close after this request.
    pub close: bool,
}

impl RequestHead {
    /// The Host field's value (checked to be authority characters).
    pub fn host<'b>(&self, buf: &'b [u8]) -> &'b str {
        str_of(&buf[self.host.clone()])
    }

    /// The path (before any `?`) and the query.
    pub fn path_and_query<'b>(&self, buf: &'b [u8]) -> (&'b str, Option<&'b str>) {
        let t = str_of(&buf[self.target.clone()]);
        match t.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (t, None),
        }
    }
}

/// What a request head came to.
#[derive(Debug)]
pub enum RequestParse {
    /// More bytes are needed.
    Partial,
    Fast(RequestHead),
    /// Not the plain case (or not valid): hyper serves it; the reason is
    /// for the debug log.
    Fallback(&'static str),
}

/// A response head from the upstream.
#[derive(Debug)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub reason: Range<usize>,
    pub framing: Framing,
    /// The upstream closes the connection after this response.
    pub close: bool,
}

#[derive(Debug)]
pub enum ResponseParse {
    Partial,
    Head(ResponseHead),
    Invalid(&'static str),
}

/// Where `part` (a slice httparse returned) lies in `buf`. httparse may
/// hand back an empty slice that is not in `buf` at all (an empty reason
/// phrase); that, and anything else outside `buf`, is the empty range.
fn range_of(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    match start.checked_add(part.len()) {
        Some(end) if !part.is_empty() && end <= buf.len() => start..end,
        _ => 0..0,
    }
}

/// The text of a range httparse already checked to be visible ASCII (the
/// target) or a token; never fails on such input.
fn str_of(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("")
}

fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',').map(|t| t.trim_ascii())
}

/// Decimal Content-Length digits (RFC 9110 §8.6: `1*DIGIT`), bounded.
fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// A Host value made only of the characters an authority (`host[:port]`,
/// IPv6 literals included) is made of; no userinfo.
fn plain_authority(v: &[u8]) -> bool {
    !v.is_empty()
        && v.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'[' | b']')
        })
}

fn is(name: &[u8], lower: &str) -> bool {
    name.eq_ignore_ascii_case(lower.as_bytes())
}

/// Parses a request head at the start of `buf`; `fields` receives the
/// fields to forward (cleared first). `max_head`: a longer unfinished head
/// is left to hyper (it answers 431).
pub fn parse_request(buf: &[u8], fields: &mut Vec<Field>, max_head: usize) -> RequestParse {
    use RequestParse::Fallback;
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut hs);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > max_head => return Fallback("head_too_large"),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Fallback("head_too_large")
        }
        Ok(httparse::Status::Partial) => return RequestParse::Partial,
        Err(_) => return Fallback("malformed_head"),
    };
    if req.version != Some(1) {
        return Fallback("not_http_1_1");
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Fallback("malformed_head");
    };
    if method == "CONNECT" || !target.starts_with('/') {
        return Fallback("not_origin_form");
    }
    let Ok(m) = http::Method::from_bytes(method.as_bytes()) else {
        return Fallback("bad_method");
    };
    let mut host = None;
    let mut length = None;
    let mut chunked = false;
    let mut close = false;
    fields.clear();
    for h in req.headers.iter() {
        let (name, value) = (h.name.as_bytes(), h.value);
        let field = || Field {
            name: range_of(buf, name),
            value: range_of(buf, value),
        };
        match name.len() {
            4 if is(name, "host") => {
                if host.is_some() || !plain_authority(value) {
                    return Fallback("bad_host");
                }
                host = Some(range_of(buf, value));
            }
            14 if is(name, "content-length") => {
                if length.is_some() {
                    return Fallback("repeated_content_length");
                }
                match content_length(value) {
                    Some(n) => length = Some(n),
                    None => return Fallback("content_length"),
                }
            }
            17 if is(name, "transfer-encoding") => {
                if chunked || !value.eq_ignore_ascii_case(b"chunked") {
                    return Fallback("transfer_encoding");
                }
                chunked = true;
            }
            10 if is(name, "connection") => {
                for t in tokens(value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !(t.is_empty() || t.eq_ignore_ascii_case(b"keep-alive")) {
                        return Fallback("connection_options");
                    }
                }
                continue;
            }
            10 if is(name, "keep-alive") => continue,
            16 if is(name, "proxy-connection") => continue,
            7 if is(name, "upgrade") => return Fallback("upgrade"),
            6 if is(name, "expect") => return Fallback("expect"),
            2 if is(name, "te") => return Fallback("te"),
            14 if is(name, "http2-settings") => return Fallback("h2c"),
            12 if is(name, "grpc-timeout") => return Fallback("grpc"),
            12 if is(name, "content-type")
                && value.len() >= 16
                && value[..16].eq_ignore_ascii_case(b"application/grpc") =>
            {
                return Fallback("grpc")
            }
            _ => {}
        }
        fields.push(field());
    }
    let Some(host) = host else {
        return Fallback("no_host");
    };
    let framing = match (chunked, length) {
        (true, Some(_)) => return Fallback("content_length_with_transfer_encoding"),
        (true, None) => Framing::Chunked,
        (false, Some(n)) if n > 0 => Framing::Length(n),
        (false, _) => Framing::Empty,
    };
    RequestParse::Fast(RequestHead {
        len,
        method: m,
        method_at: range_of(buf, method.as_bytes()),
        target: range_of(buf, target.as_bytes()),
        host,
        framing,
        close,
    })
}

/// Parses a response head; `head_request`: the request was HEAD (no body
/// whatever the framing fields say).
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    fields: &mut Vec<Field>,
    max_head: usize,
) -> ResponseParse {
    use ResponseParse::Invalid;
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut hs);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > max_head => {
            return Invalid("response head over the size limit")
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Invalid("response head over the size limit")
        }
        Ok(httparse::Status::Partial) => return ResponseParse::Partial,
        Err(_) => return Invalid("malformed response head"),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Invalid("malformed response head");
    };
    let (mut close, mut keep_alive) = (false, false);
    let mut length: Option<u64> = None;
    let mut length_field = None;
    let mut te: Option<bool> = None; // Some(last coding is chunked)
    let mut nominated = None;
    fields.clear();
    for h in resp.headers.iter() {
        let (name, value) = (h.name.as_bytes(), h.value);
        match name.len() {
            10 if is(name, "connection") => {
                for t in tokens(value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    } else if !t.is_empty() {
                        nominated = Some(range_of(buf, value));
                    }
                }
                continue;
            }
            10 if is(name, "keep-alive") => continue,
            16 if is(name, "proxy-connection") => continue,
            7 if is(name, "upgrade") => continue,
            2 if is(name, "te") => continue,
            17 if is(name, "transfer-encoding") => {
                let last = tokens(value).filter(|t| !t.is_empty()).last();
                te = Some(last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")));
            }
            14 if is(name, "content-length") => {
                let Some(n) = content_length(value) else {
                    return Invalid("bad content-length");
                };
                match length {
                    Some(m) if m != n => return Invalid("conflicting content-length"),
                    Some(_) => continue,
                    None => {
                        length = Some(n);
                        length_field = Some(fields.len());
                    }
                }
            }
            _ => {}
        }
        fields.push(Field {
            name: range_of(buf, name),
            value: range_of(buf, value),
        });
    }
    if let Some(at) = nominated {
        // Fields the Connection header names are hop-by-hop too.
        let listed: Vec<&[u8]> = tokens(&buf[at]).collect();
        fields.retain(|f| {
            !listed
                .iter()
                .any(|t| t.eq_ignore_ascii_case(&buf[f.name.clone()]))
        });
        length_field = fields
            .iter()
            .position(|f| is(&buf[f.name.clone()], "content-length"));
    }
    let framing = if head_request || status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (te, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::Close,
            (None, Some(0)) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        }
    };
    if let (Some(_), Some(i)) = (te, length_field) {
        // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3); the
        // client must not see both.
        fields.remove(i);
    }
    ResponseParse::Head(ResponseHead {
        len,
        status,
        reason: resp
            .reason
            .map(|r| range_of(buf, r.as_bytes()))
            .unwrap_or(0..0),
        framing,
        close: close || (version == 0 && !keep_alive) || framing == Framing::Close,
    })
}

fn put_fields(out: &mut Vec<u8>, buf: &[u8], fields: &[Field]) {
    for f in fields {
        out.extend_from_slice(&buf[f.name.clone()]);
        out.extend_from_slice(b": ");
        out.extend_from_slice(&buf[f.value.clone()]);
        out.extend_from_slice(b"\r\n");
    }
}

fn put_map(out: &mut Vec<u8>, map: &http::HeaderMap) {
    for (name, value) in map {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// A response the proxy made (`local_response` and friends) as HTTP/1.1
/// bytes, with its length; `close` adds `connection: close`.
pub fn write_local(
    out: &mut Vec<u8>,
    status: http::StatusCode,
    headers: &http::HeaderMap,
    body: &[u8],
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    put_map(out, headers);
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// The fields as a header map, for what needs one (header matches, hash
/// keys, header edits, retry decisions).
pub fn header_map(buf: &[u8], fields: &[Field]) -> http::HeaderMap {
    let mut map = http::HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name = http::HeaderName::from_bytes(&buf[f.name.clone()]);
        let value = http::HeaderValue::from_bytes(&buf[f.value.clone()]);
        if let (Ok(n), Ok(v)) = (name, value) {
            map.append(n, v);
        }
    }
    map
}

/// Header fields to write: the kept ones as they came, or a map made from
/// them (and edited).
pub enum Fields<'a> {
    Raw(&'a [Field]),
    Map(&'a http::HeaderMap),
}

/// The request line and fields for the upstream (`host` is among the
/// fields).
pub fn write_request(out: &mut Vec<u8>, buf: &[u8], head: &RequestHead, fields: Fields<'_>) {
    out.extend_from_slice(&buf[head.method_at.clone()]);
    out.push(b' ');
    out.extend_from_slice(&buf[head.target.clone()]);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    match fields {
        Fields::Raw(f) => put_fields(out, buf, f),
        Fields::Map(m) => put_map(out, m),
    }
    out.extend_from_slice(b"\r\n");
}

/// The status line and fields for the client; `close` adds
/// `connection: close`.
pub fn write_response(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &ResponseHead,
    fields: Fields<'_>,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let s = head.status;
    out.extend_from_slice(&[
        b'0' + (s / 100 % 10) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(&buf[head.reason.clone()]);
    out.extend_from_slice(b"\r\n");
    match fields {
        Fields::Raw(f) => put_fields(out, buf, f),
        Fields::Map(m) => put_map(out, m),
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 64 * 1024;

    fn req(raw: &str) -> (RequestParse, Vec<Field>) {
        let mut f = Vec::new();
        (parse_request(raw.as_bytes(), &mut f, MAX), f)
    }

    fn fallback(raw: &str) -> bool {
        matches!(req(raw).0, RequestParse::Fallback(_))
    }

    #[test]
    fn a_plain_request_is_taken_and_written_back_without_connection_fields() {
        let raw = "GET /a/b?x=1 HTTP/1.1\r\nHost: api:80\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Id: 7\r\n\r\nNEXT";
        let (p, fields) = req(raw);
        let RequestParse::Fast(h) = p else {
            panic!("not taken: {p:?}")
        };
        assert_eq!(h.len, raw.len() - 4);
        assert_eq!(h.method, http::Method::GET);
        assert_eq!(h.framing, Framing::Empty);
        assert!(!h.close);
        assert_eq!(h.path_and_query(raw.as_bytes()), ("/a/b", Some("x=1")));
        assert_eq!(&raw.as_bytes()[h.host.clone()], b"api:80");
        let mut out = Vec::new();
        write_request(&mut out, raw.as_bytes(), &h, Fields::Raw(&fields));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /a/b?x=1 HTTP/1.1\r\nHost: api:80\r\nX-Id: 7\r\n\r\n"
        );
    }

    #[test]
    fn request_framing_is_read_from_one_length_or_chunked_alone() {
        let RequestParse::Fast(h) =
            req("POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 12\r\n\r\n").0
        else {
            panic!()
        };
        assert_eq!(h.framing, Framing::Length(12));
        let RequestParse::Fast(h) = req(
            "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: Chunked\r\nconnection: close\r\n\r\n",
        )
        .0
        else {
            panic!()
        };
        assert_eq!(h.framing, Framing::Chunked);
        assert!(h.close);
    }

    #[test]
    fn ambiguous_or_unusual_requests_are_left_to_hyper() {
        // Smuggling shapes: both framings, repeated or non-numeric lengths,
        // codings other than chunked alone.
        assert!(fallback(
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
        ));
        assert!(fallback(
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\n"
        ));
        assert!(fallback(
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: +3\r\n\r\n"
        ));
        assert!(fallback(
            "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
        ));
        assert!(fallback("POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n"));
        assert!(fallback(
            "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding : chunked\r\n\r\n"
        ));
        // Host: none, two, userinfo.
        assert!(fallback("GET / HTTP/1.1\r\n\r\n"));
        assert!(fallback("GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n"));
        assert!(fallback("GET / HTTP/1.1\r\nhost: u@a\r\n\r\n"));
        // Upgrades, h2c, 100-continue, TE, other versions and forms.
        assert!(fallback(
            "GET / HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
        ));
        assert!(fallback(
            "GET / HTTP/1.1\r\nhost: a\r\nupgrade: h2c\r\nhttp2-settings: x\r\n\r\n"
        ));
        assert!(fallback(
            "PUT / HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n"
        ));
        assert!(fallback(
            "GET / HTTP/1.1\r\nhost: a\r\nte: trailers\r\n\r\n"
        ));
        assert!(fallback("GET / HTTP/1.0\r\nhost: a\r\n\r\n"));
        assert!(fallback("GET http://a/ HTTP/1.1\r\nhost: a\r\n\r\n"));
        assert!(fallback("OPTIONS * HTTP/1.1\r\nhost: a\r\n\r\n"));
        assert!(fallback("CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\n"));
        assert!(fallback(
            "GET / HTTP/1.1\r\nhost: a\r\nconnection: x-secret\r\n\r\n"
        ));
        assert!(fallback(
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-type: application/grpc\r\n\r\n"
        ));
        // Garbage and obsolete line folding.
        assert!(fallback(
            "GET / HTTP/1.1\r\nhost: a\r\nx: 1\r\n  folded\r\n\r\n"
        ));
        assert!(fallback("GET /\0 HTTP/1.1\r\nhost: a\r\n\r\n"));
    }

    #[test]
    fn an_unfinished_head_waits_until_the_size_limit_then_goes_to_hyper() {
        let mut f = Vec::new();
        let raw = b"GET / HTTP/1.1\r\nhost: a\r\nx: ";
        assert!(matches!(
            parse_request(raw, &mut f, MAX),
            RequestParse::Partial
        ));
        assert!(matches!(
            parse_request(raw, &mut f, raw.len()),
            RequestParse::Fallback(_)
        ));
        // A whole head that arrived at once is held to the limit too.
        let whole = b"GET / HTTP/1.1\r\nhost: a\r\nx: 123456\r\n\r\n";
        assert!(matches!(
            parse_request(whole, &mut f, 20),
            RequestParse::Fallback("head_too_large")
        ));
    }

    fn resp(raw: &str, head_request: bool) -> (ResponseParse, Vec<Field>) {
        let mut f = Vec::new();
        (parse_response(raw.as_bytes(), head_request, &mut f, MAX), f)
    }

    fn framing(raw: &str) -> Framing {
        match resp(raw, false).0 {
            ResponseParse::Head(h) => h.framing,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112_section_6_3() {
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            Framing::Length(5)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            Framing::Empty
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"),
            Framing::Empty
        );
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n"),
            Framing::Empty
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
            Framing::Chunked
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"),
            Framing::Close
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), Framing::Close);
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n"),
            Framing::Length(5)
        );
        let ResponseParse::Head(h) = resp("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true).0
        else {
            panic!()
        };
        assert_eq!(h.framing, Framing::Empty);
        assert!(matches!(
            resp(
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
                false
            )
            .0,
            ResponseParse::Invalid(_)
        ));
        assert!(matches!(
            resp("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", false).0,
            ResponseParse::Invalid(_)
        ));
        assert!(matches!(
            resp("HTTP/1.1 2000 OK\r\n\r\n", false).0,
            ResponseParse::Invalid(_)
        ));
    }

    #[test]
    fn a_status_line_without_a_reason_and_empty_values_are_written_back() {
        // Found by the fuzzer: httparse's empty reason is not a slice of
        // the buffer.
        let raw = "HTTP/1.0 200\n\r\n";
        let (p, fields) = resp(raw, false);
        let ResponseParse::Head(h) = p else {
            panic!("{p:?}")
        };
        let mut out = Vec::new();
        write_response(&mut out, raw.as_bytes(), &h, Fields::Raw(&fields), h.close);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 \r\nconnection: close\r\n\r\n"
        );
        let raw = "GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\n\r\n";
        let (RequestParse::Fast(h), fields) = req(raw) else {
            panic!()
        };
        let mut out = Vec::new();
        write_request(&mut out, raw.as_bytes(), &h, Fields::Raw(&fields));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nHost: a\r\nX-Empty: \r\n\r\n"
        );
    }

    #[test]
    fn response_keep_alive_follows_the_version_and_connection_field() {
        let close = |raw: &str| match resp(raw, false).0 {
            ResponseParse::Head(h) => h.close,
            other => panic!("{other:?}"),
        };
        assert!(!close("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(close(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(close("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!close(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"
        ));
    }

    #[test]
    fn response_is_written_without_hop_by_hop_fields_and_length_beside_chunked() {
        let raw = "HTTP/1.1 201 Created\r\nConnection: x-hop, keep-alive\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\nX-Ok: 2\r\n\r\n";
        let (p, fields) = resp(raw, false);
        let ResponseParse::Head(h) = p else { panic!() };
        let mut out = Vec::new();
        write_response(&mut out, raw.as_bytes(), &h, Fields::Raw(&fields), true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-Ok: 2\r\nconnection: close\r\n\r\n"
        );
    }
}
