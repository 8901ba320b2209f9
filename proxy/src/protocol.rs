//! What the app (or a destination) speaks on a port, as the proxy uses it:
//! HTTP/1.1, prior-knowledge HTTP/2 (or gRPC), or bytes not to be sniffed.

use serde::Serialize;
use xds_proto::v1 as pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
    Opaque,
}

impl Protocol {
    pub(crate) fn from_pb(v: i32) -> Option<Protocol> {
        Some(match pb::Protocol::try_from(v).ok()? {
            pb::Protocol::Http => Protocol::Http,
            pb::Protocol::Http2 => Protocol::Http2,
            pb::Protocol::Grpc => Protocol::Grpc,
            pb::Protocol::Tcp => Protocol::Tcp,
            pb::Protocol::Opaque => Protocol::Opaque,
            pb::Protocol::Unspecified => return None,
        })
    }

    pub(crate) fn to_pb(self) -> pb::Protocol {
        match self {
            Protocol::Http => pb::Protocol::Http,
            Protocol::Http2 => pb::Protocol::Http2,
            Protocol::Grpc => pb::Protocol::Grpc,
            Protocol::Tcp => pb::Protocol::Tcp,
            Protocol::Opaque => pb::Protocol::Opaque,
        }
    }

    /// HTTP/2 end to end (prior knowledge, no upgrade).
    pub fn is_h2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }

    /// Server-first or otherwise not to be sniffed.
    pub fn is_opaque(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Opaque)
    }
}
