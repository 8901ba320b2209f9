//! The request body as retries and mirrors see it: a small body of known
//! length is read into memory (every try gets a copy), one of unknown length
//! is teed (a second try is possible if the copy ends up complete), a large
//! one is streamed once.

use crate::http::body::{ClientBody, RequestBody, Tee};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Body as _;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a retry waits for the tee to hand over a body the first try
/// was still sending.
const TEE_WAIT: Duration = Duration::from_millis(250);

/// The request body as retries see it.
pub enum Replay {
    /// Complete in memory (possibly empty): every try gets a copy.
    Bytes(Option<Bytes>),
    /// Streamed once; no second try.
    Stream(Option<ClientBody>),
    /// Streamed while copied; a second try is possible if the copy ends up
    /// complete.
    Tee {
        body: Option<ClientBody>,
        copy: Option<oneshot::Receiver<Option<Bytes>>>,
        max: usize,
    },
}

impl Replay {
    /// Reads a small body of known length into memory (the client is sending
    /// it whole anyway); tees one of unknown length.
    pub async fn new(body: ClientBody, keep: bool, max: u64) -> Result<Replay, String> {
        if body.is_end_stream() {
            return Ok(Replay::Bytes(None));
        }
        if !keep {
            return Ok(Replay::Stream(Some(body)));
        }
        match body.size_hint().exact() {
            Some(n) if n <= max => {
                let bytes = body
                    .collect()
                    .await
                    .map_err(|e| format!("reading the request body: {e}"))?
                    .to_bytes();
                Ok(Replay::Bytes(Some(bytes)))
            }
            Some(_) => Ok(Replay::Stream(Some(body))),
            None => Ok(Replay::Tee {
                body: Some(body),
                copy: None,
                max: usize::try_from(max).unwrap_or(usize::MAX),
            }),
        }
    }

    pub fn bytes(&self) -> Option<Option<&Bytes>> {
        match self {
            Replay::Bytes(b) => Some(b.as_ref()),
            _ => None,
        }
    }

    /// The body for the next try, None if it cannot be sent again.
    pub async fn next(&mut self) -> Option<RequestBody> {
        match self {
            Replay::Bytes(b) => Some(RequestBody::Full(b.clone())),
            Replay::Stream(b) => b.take().map(RequestBody::Stream),
            Replay::Tee { body, copy, max } => {
                if let Some(b) = body.take() {
                    let (tee, rx) = Tee::new(b, *max);
                    *copy = Some(rx);
                    return Some(RequestBody::Tee(tee));
                }
                let rx = copy.take()?;
                let bytes = tokio::time::timeout(TEE_WAIT, rx).await.ok()?.ok()??;
                *self = Replay::Bytes(Some(bytes));
                self.bytes().map(|b| RequestBody::Full(b.cloned()))
            }
        }
    }

    /// Whether a second try could have a body.
    pub fn replayable(&self) -> bool {
        match self {
            Replay::Bytes(_) => true,
            Replay::Stream(_) => false,
            Replay::Tee { copy, .. } => copy.is_some(),
        }
    }
}
