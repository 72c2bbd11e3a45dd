//! HTTP/1.1 as far as the stand-in runner needs it: one request per
//! connection, its head and a `Content-Length` body, and a response that
//! closes the connection.

use std::io::{self, BufRead, Write};

/// Bodies beyond this are refused (engine.io's default `maxHttpBufferSize`).
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
        let length: usize = request
            .header("content-length")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if length > MAX_BODY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
        }
        request.body = vec![0; length];
        reader.read_exact(&mut request.body)?;
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
}
