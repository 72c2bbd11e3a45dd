//! HTTP/1.1 as far as the stand-in runner needs it: one request per
//! connection, its head and body (`Content-Length` or chunked), and a
//! response that closes the connection.

use std::io::{self, BufRead, Read, Write};

/// Bodies are kept up to this size (engine.io's default `maxHttpBufferSize`).
const MAX_BODY: usize = 1_000_000;

pub struct Request {
    pub method: String,
    /// The request target: path and query.
    pub target: String,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// Reads the head and, if it announces one, the body.
    pub fn read(reader: &mut impl BufRead) -> io::Result<Request> {
        let mut request_line = String::new();
        reader.read_line(&mut request_line)?;
        let mut words = request_line.split_whitespace();
        let method = words.next().unwrap_or_default().to_owned();
        let target = words.next().unwrap_or("/").to_owned();
        let mut headers = Vec::new();
        let mut line = String::new();
        while reader.read_line(&mut line)? > 2 {
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
            line.clear();
        }
        let mut request = Request {
            method,
            target,
            headers,
            body: Vec::new(),
        };
        let chunked = request
            .header("transfer-encoding")
            .is_some_and(|coding| coding.eq_ignore_ascii_case("chunked"));
        if chunked {
            while let Some(size) = chunk_size(reader)? {
                read_body(reader, size, &mut request.body)?;
                reader.read_line(&mut String::new())?;
            }
            // Trailers, up to the empty line.
            let mut line = String::new();
            while reader.read_line(&mut line)? > 2 {
                line.clear();
            }
        } else {
            let length = request
                .header("content-length")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            read_body(reader, length, &mut request.body)?;
        }
        Ok(request)
    }

    /// The first header of that (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// A query parameter's raw value.
    pub fn query(&self, key: &str) -> Option<&str> {
        let (_, query) = self.target.split_once('?')?;
        query
            .split('&')
            .find_map(|pair| match pair.split_once('=') {
                Some((name, value)) if name == key => Some(value),
                None if pair == key => Some(""),
                _ => None,
            })
    }

    /// `Connection: Upgrade` + `Upgrade: websocket` with a key to answer.
    pub fn is_websocket_upgrade(&self) -> bool {
        let has_token = |name: &str, token: &str| {
            self.header(name).is_some_and(|value| {
                value
                    .split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        };
        has_token("connection", "upgrade")
            && has_token("upgrade", "websocket")
            && self.header("sec-websocket-key").is_some()
    }
}

/// The next chunk's size, `None` after the last.
fn chunk_size(reader: &mut impl BufRead) -> io::Result<Option<u64>> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let size = line.split(';').next().unwrap_or_default().trim();
    match u64::from_str_radix(size, 16) {
        Ok(0) => Ok(None),
        Ok(size) => Ok(Some(size)),
        Err(_) => Err(io::Error::new(io::ErrorKind::InvalidData, "bad chunk size")),
    }
}

/// Appends `length` bytes of body, keeping at most [`MAX_BODY`] of it: the
/// rest is read and dropped, so that the client sees the answer, not a reset.
fn read_body(reader: &mut impl BufRead, length: u64, body: &mut Vec<u8>) -> io::Result<()> {
    let kept = length.min(MAX_BODY.saturating_sub(body.len()) as u64);
    let read = reader.by_ref().take(kept).read_to_end(body)?;
    let dropped = io::copy(&mut reader.by_ref().take(length - kept), &mut io::sink())?;
    if read as u64 + dropped < length {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

pub struct Response {
    status: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    /// `status` with its reason phrase, e.g. `200 OK`.
    pub fn new(status: &'static str, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", content_type.to_owned())],
            body: body.into(),
        }
    }

    pub fn empty(status: &'static str) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub fn write_to(&self, stream: &mut impl Write) -> io::Result<()> {
        let mut head = format!("HTTP/1.1 {}\r\n", self.status);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        ));
        stream.write_all(head.as_bytes())?;
        stream.write_all(&self.body)?;
        stream.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_head_query_and_body() {
        let wire = "POST /socket.io/?EIO=4&transport=polling&sid=abc&b64 HTTP/1.1\r\n\
                    Host: x\r\nContent-Length: 2\r\nConnection: keep-alive, Upgrade\r\n\
                    Upgrade: WebSocket\r\nSec-WebSocket-Key: k\r\n\r\n40rest";
        let request = Request::read(&mut wire.as_bytes()).unwrap();
        assert_eq!(
            (request.method.as_str(), request.path()),
            ("POST", "/socket.io/")
        );
        assert_eq!(request.query("sid"), Some("abc"));
        assert_eq!(request.query("b64"), Some(""));
        assert_eq!(request.query("s"), None);
        assert_eq!(request.body, b"40");
        assert!(request.is_websocket_upgrade());
    }

    #[test]
    fn reads_a_chunked_body_and_drops_what_is_beyond_the_limit() {
        let wire = "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\nnext";
        let mut reader = wire.as_bytes();
        assert_eq!(Request::read(&mut reader).unwrap().body, b"abcde");
        assert_eq!(reader, b"next");

        let mut wire = format!(
            "POST /x HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 10
        )
        .into_bytes();
        wire.resize(wire.len() + MAX_BODY + 10, b'x');
        wire.extend_from_slice(b"next");
        let mut reader = &wire[..];
        assert_eq!(Request::read(&mut reader).unwrap().body.len(), MAX_BODY);
        assert_eq!(reader, b"next");

        let short = "POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc";
        let error = Request::read(&mut short.as_bytes()).err().unwrap();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
