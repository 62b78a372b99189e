//! Hosts for source-fetch tests, served from the test's own threads on a
//! listener it gives them (bound in a network namespace with
//! [`super::netns::Netns::bind`], or anywhere else).
//!
//! - [`Origin`]: a tiny HTTP/1.1 server. Each path answers a redirect or a
//!   file; a file honours one `Range: bytes=a-` or `bytes=a-b` (206 with
//!   `Content-Range` and `Content-Length`, 416 past the end) like a CDN
//!   does. Every request is recorded (path, `Range`, status). One thread
//!   per connection, `Connection: close`.
//! - [`Tripwire`]: a listener that only counts the connections it gets: a
//!   target that must never be contacted.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What a path of an [`Origin`] answers.
#[derive(Clone)]
pub enum Answer {
    /// `status` (301, 302, 303, 307, 308) with this `Location`, as written.
    Redirect { status: u16, location: String },
    /// These bytes, as `video/mp4`, with Range support.
    File(Arc<Vec<u8>>),
}

impl Answer {
    pub fn redirect(status: u16, location: impl Into<String>) -> Answer {
        Answer::Redirect {
            status,
            location: location.into(),
        }
    }
}

/// One request an [`Origin`] answered.
#[derive(Clone, Debug)]
pub struct OriginRequest {
    pub path: String,
    /// The `Range` header as sent, if any.
    pub range: Option<String>,
    pub status: u16,
}

impl OriginRequest {
    /// The first byte asked for by a `Range: bytes=<start>-...` header.
    pub fn range_start(&self) -> Option<u64> {
        self.range
            .as_deref()?
            .strip_prefix("bytes=")?
            .split('-')
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

/// A running origin; its threads live as long as the test process.
pub struct Origin {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<OriginRequest>>>,
}

impl Origin {
    /// Serves `routes` (path → answer; anything else is 404) on `listener`.
    pub fn serve(listener: TcpListener, routes: Vec<(&str, Answer)>) -> Origin {
        let addr = listener.local_addr().expect("origin address");
        let routes: Arc<Vec<(String, Answer)>> = Arc::new(
            routes
                .into_iter()
                .map(|(path, answer)| (path.to_string(), answer))
                .collect(),
        );
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let routes = routes.clone();
                let log = log.clone();
                std::thread::spawn(move || answer_one(stream, &routes, &log));
            }
        });
        Origin { addr, requests }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<OriginRequest> {
        self.requests.lock().unwrap().clone()
    }
}

fn answer_one(stream: TcpStream, routes: &[(String, Answer)], log: &Mutex<Vec<OriginRequest>>) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_string();
    let mut range = None;
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        if line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
        line.clear();
    }
    let answer = routes
        .iter()
        .find(|(route, _)| *route == path)
        .map(|(_, answer)| answer.clone());
    let (status, head, body): (u16, String, &[u8]) = match &answer {
        None => (404, "Content-Length: 0\r\n".into(), &[]),
        Some(Answer::Redirect { status, location }) => (
            *status,
            format!("Location: {location}\r\nContent-Length: 0\r\n"),
            &[],
        ),
        Some(Answer::File(bytes)) => file_answer(bytes, range.as_deref()),
    };
    log.lock().unwrap().push(OriginRequest {
        path,
        range,
        status,
    });
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Other",
    };
    let mut stream = stream;
    let _ = stream.write_all(
        format!("HTTP/1.1 {status} {reason}\r\n{head}Connection: close\r\n\r\n").as_bytes(),
    );
    if method != "HEAD" {
        let _ = stream.write_all(body);
    }
}

/// Status, headers and body of a file for an optional `Range` header.
fn file_answer<'a>(bytes: &'a [u8], range: Option<&str>) -> (u16, String, &'a [u8]) {
    let len = bytes.len() as u64;
    let asked = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(start, end)| {
            let start: u64 = start.trim().parse().ok()?;
            let end: Option<u64> = match end.trim() {
                "" => None,
                end => Some(end.parse().ok()?),
            };
            Some((start, end))
        });
    let common = "Content-Type: video/mp4\r\nAccept-Ranges: bytes\r\n";
    match asked {
        None => (200, format!("{common}Content-Length: {len}\r\n"), bytes),
        Some((start, end)) if start >= len || end.is_some_and(|end| end < start) => (
            416,
            format!("Content-Range: bytes */{len}\r\nContent-Length: 0\r\n"),
            &[],
        ),
        Some((start, end)) => {
            let end = end.unwrap_or(len - 1).min(len - 1);
            let body = &bytes[start as usize..=end as usize];
            (
                206,
                format!(
                    "{common}Content-Range: bytes {start}-{end}/{len}\r\nContent-Length: {}\r\n",
                    body.len()
                ),
                body,
            )
        }
    }
}

/// A listener that counts the connections it gets and closes them.
pub struct Tripwire {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Tripwire {
    pub fn watch(listener: TcpListener) -> Tripwire {
        let addr = listener.local_addr().expect("tripwire address");
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Tripwire { addr, connections }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}
