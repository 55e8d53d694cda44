//! A minimal HTTP/1.1 client for servers the tests start on loopback (the
//! daemon's metrics endpoint, a Prometheus server): one GET per connection,
//! bodies with Content-Length, until close, or chunked.
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

#[derive(Debug)]
pub struct Response {
    /// The status line, e.g. `HTTP/1.1 200 OK`.
    pub status: String,
    /// Lower-cased, empty when absent.
    pub content_type: String,
    pub body: String,
}

impl Response {
    pub fn ok(&self) -> bool {
        self.status.split(' ').nth(1) == Some("200")
    }
}

/// One GET of `path` (already percent-encoded) on 127.0.0.1:`port`; `Err`
/// when nothing answers there.
pub fn try_get(port: u16, path: &str) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response from port {port}: {raw:?}"));
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_ascii_lowercase())
            })
            .unwrap_or_default()
    };
    let body = if header("transfer-encoding") == "chunked" {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(Response {
        status: head.lines().next().unwrap_or("").to_string(),
        content_type: header("content-type"),
        body,
    })
}

/// [`try_get`] of a server that must be there.
pub fn get(port: u16, path: &str) -> Response {
    try_get(port, path).unwrap_or_else(|e| panic!("GET 127.0.0.1:{port}{path}: {e}"))
}

/// A chunked body: hex size line, data, CRLF, until the size 0.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .unwrap_or_else(|| panic!("chunked body without a size line: {rest:?}"));
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|e| panic!("chunk size {size:?}: {e}"));
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = after[size..]
            .strip_prefix("\r\n")
            .expect("CRLF after a chunk");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            super::dechunk("5\r\nhello\r\n7;x=1\r\n, world\r\n0\r\n\r\n"),
            "hello, world"
        );
    }
}
