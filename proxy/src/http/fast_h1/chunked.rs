//! Where a chunked body ends (RFC 9112 §7.1). The fast path forwards chunks
//! and trailers byte for byte; this scanner only follows the framing so it
//! knows where the message stops, and refuses framing a strict peer would
//! refuse (bad sizes, bare CR or LF, oversize extensions or trailers).

/// Longest chunk-size line extension and longest trailer section.
const MAX_EXTENSION: usize = 4096;
const MAX_TRAILERS: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size (`digits` so far).
    Size {
        digits: u8,
    },
    /// Whitespace or an extension after the size, up to CR.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// Malformed chunked framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct BadChunk(&'static str);

/// A byte a header field or chunk extension may hold (RFC 9110 §5.5:
/// visible ASCII, space, tab, obs-text); control bytes are refused so that
/// no receiver downstream can read the framing differently.
fn field_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

#[derive(Debug)]
pub struct ChunkScanner {
    state: State,
    size: u64,
    /// Bytes of extension or trailers seen.
    extra: usize,
}

impl Default for ChunkScanner {
    fn default() -> Self {
        ChunkScanner {
            state: State::Size { digits: 0 },
            size: 0,
            extra: 0,
        }
    }
}

impl ChunkScanner {
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Follows `data`; returns how many of its bytes belong to this body
    /// (all of them unless the body ends inside `data`).
    pub fn scan(&mut self, data: &[u8]) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < data.len() {
            if self.state == State::Data {
                let take = (self.size as usize).min(data.len() - i);
                self.size -= take as u64;
                i += take;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = data[i];
            i += 1;
            self.state = match self.state {
                State::Size { digits } => match (b as char).to_digit(16) {
                    Some(d) if digits < 15 => {
                        self.size = self.size * 16 + u64::from(d);
                        State::Size { digits: digits + 1 }
                    }
                    Some(_) => return Err(BadChunk("chunk size too large")),
                    None if digits == 0 => return Err(BadChunk("chunk size expected")),
                    None => match b {
                        b'\r' => State::SizeLf,
                        b';' | b' ' | b'\t' => {
                            self.extra = 0;
                            State::Extension
                        }
                        _ => return Err(BadChunk("bad chunk size")),
                    },
                },
                State::Extension => match b {
                    b'\r' => State::SizeLf,
                    b'\n' => return Err(BadChunk("bare LF")),
                    _ if !field_byte(b) => {
                        return Err(BadChunk("control byte in a chunk extension"))
                    }
                    _ => {
                        self.extra += 1;
                        if self.extra > MAX_EXTENSION {
                            return Err(BadChunk("chunk extension too long"));
                        }
                        State::Extension
                    }
                },
                State::SizeLf => match b {
                    b'\n' if self.size == 0 => {
                        self.extra = 0;
                        State::TrailerStart
                    }
                    b'\n' => State::Data,
                    _ => return Err(BadChunk("bare CR")),
                },
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    _ => return Err(BadChunk("chunk data longer than its size")),
                },
                State::DataLf => match b {
                    b'\n' => State::Size { digits: 0 },
                    _ => return Err(BadChunk("bare CR")),
                },
                State::TrailerStart => match b {
                    b'\r' => State::EndLf,
                    b'\n' => return Err(BadChunk("bare LF")),
                    _ => self.trailer_byte(b)?,
                },
                State::Trailer => match b {
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(BadChunk("bare LF")),
                    _ => self.trailer_byte(b)?,
                },
                State::TrailerLf => match b {
                    b'\n' => State::TrailerStart,
                    _ => return Err(BadChunk("bare CR")),
                },
                State::EndLf => match b {
                    b'\n' => {
                        self.state = State::Done;
                        return Ok(i);
                    }
                    _ => return Err(BadChunk("bare CR")),
                },
                State::Data | State::Done => unreachable!("handled above"),
            };
            if self.state == State::Done {
                return Ok(i);
            }
        }
        Ok(i)
    }

    fn trailer_byte(&mut self, b: u8) -> Result<State, BadChunk> {
        if !field_byte(b) {
            return Err(BadChunk("control byte in a trailer"));
        }
        self.extra += 1;
        if self.extra > MAX_TRAILERS {
            return Err(BadChunk("trailers too long"));
        }
        Ok(State::Trailer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &[u8]) -> Result<usize, BadChunk> {
        let mut s = ChunkScanner::default();
        let n = s.scan(body)?;
        assert!(s.done(), "not done after {n} bytes");
        Ok(n)
    }

    #[test]
    fn a_body_ends_after_the_last_chunk_and_trailers_wherever_it_is_split() {
        let body = b"5\r\nhello\r\nA;ext=1\r\n0123456789\r\n0\r\nx-sum: 1\r\n\r\n";
        let mut next = body.to_vec();
        next.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(whole(&next), Ok(body.len()));
        // Fed a byte at a time.
        let mut s = ChunkScanner::default();
        let mut total = 0;
        for b in next.chunks(1) {
            if s.done() {
                break;
            }
            total += s.scan(b).unwrap();
        }
        assert_eq!(total, body.len());
        assert_eq!(whole(b"0\r\n\r\n"), Ok(5));
    }

    #[test]
    fn malformed_framing_is_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello!\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b"0\r\nx: 1\n\r\n",
            b"-1\r\n",
            b"5;x=\0\r\nhello\r\n0\r\n\r\n",
            b"0\r\nx: \x01\r\n\r\n",
        ] {
            let mut s = ChunkScanner::default();
            assert!(s.scan(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
