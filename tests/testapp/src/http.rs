//! A minimal HTTP/1.1 server and client: one request per connection (`Connection: close`),
//! which is what kubelet's probes and hooks send, and enough for bounded test traffic.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Largest request head or body read; bigger requests get 400.
const LIMIT: usize = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
        }
    }
}

pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Binds `addr` and serves it on a thread per connection.
pub fn serve(addr: SocketAddr, handler: Handler) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let handler = handler.clone();
            std::thread::spawn(move || {
                let _ = handle(stream, &handler);
            });
        }
    });
    Ok(())
}

fn handle(mut stream: TcpStream, handler: &Handler) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let response = match read_request(&mut stream) {
        Ok(req) => handler(&req),
        Err(e) => Response::new(400, format!("bad request: {e}\n")),
    };
    write!(
        stream,
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        response.status,
        reason(response.status),
        response.body.len(),
        response.body
    )?;
    stream.flush()
}

fn read_request(stream: &mut TcpStream) -> io::Result<Request> {
    let (head, mut rest) = read_head(stream)?;
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target)) = (first.next(), first.next()) else {
        return Err(invalid("no request line"));
    };
    let length = content_length(lines)?;
    if length > LIMIT {
        return Err(invalid("body too large"));
    }
    while rest.len() < length {
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(invalid("body cut short"));
        }
        rest.extend_from_slice(&buf[..n]);
    }
    rest.truncate(length);
    Ok(Request {
        method: method.to_owned(),
        path: target.split('?').next().unwrap_or("/").to_owned(),
        body: rest,
    })
}

/// Reads up to the blank line; returns the head and what was read past it.
fn read_head(stream: &mut impl Read) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            buf.truncate(end);
            return Ok((buf, rest));
        }
        if buf.len() > LIMIT {
            return Err(invalid("head too large"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(invalid("connection closed before the end of the head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn content_length<'a>(headers: impl Iterator<Item = &'a str>) -> io::Result<usize> {
    for h in headers {
        if let Some((name, value)) = h.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            return value
                .trim()
                .parse()
                .map_err(|_| invalid("bad Content-Length"));
        }
    }
    Ok(0)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// `METHOD path` to `addr`; returns the status and the body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("no status line in the response"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_and_requests() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        serve(
            addr,
            Arc::new(|r: &Request| {
                Response::new(
                    if r.path == "/ok" { 200 } else { 404 },
                    format!("{} {} {}", r.method, r.path, r.body.len()),
                )
            }),
        )
        .unwrap();
        let t = Duration::from_secs(5);
        assert_eq!(
            request(addr, "GET", "/ok?x=1", t).unwrap(),
            (200, "GET /ok 0".into())
        );
        assert_eq!(request(addr, "POST", "/drain", t).unwrap().0, 404);
    }

    #[test]
    fn head_and_rest_are_split() {
        let mut input: &[u8] = b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        let (head, rest) = read_head(&mut input).unwrap();
        assert!(head.ends_with(b"Content-Length: 3"));
        assert_eq!(rest, b"abc");
        let mut cut: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(read_head(&mut cut).is_err());
    }
}
