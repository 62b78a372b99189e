//! A webhook receiver on 127.0.0.1 for tests: records every request and
//! answers it, optionally failing the first one (to see retries).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// (status answered, lower-case headers, body) of every request received.
pub type Received = Arc<Mutex<Vec<(u16, HashMap<String, String>, Vec<u8>)>>>;

/// Starts the receiver; returns its URL and what it received. It answers
/// 200, or 500 to the very first request when `fail_first`.
pub fn webhook_receiver(fail_first: bool) -> (String, Received) {
    webhook_receiver_on(std::net::Ipv4Addr::LOCALHOST, fail_first)
}

/// As [`webhook_receiver`], listening on `addr` (e.g. `0.0.0.0`, for pods
/// in network namespaces, which reach it at their link's host address: the
/// URL returned then names `addr`, replace its host).
pub fn webhook_receiver_on(addr: std::net::Ipv4Addr, fail_first: bool) -> (String, Received) {
    let listener = TcpListener::bind((addr, 0)).expect("bind webhook receiver");
    let url = format!(
        "http://{}/hook",
        listener.local_addr().expect("receiver address")
    );
    let received: Received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let Ok(read_half) = stream.try_clone() else {
                continue;
            };
            let mut reader = BufReader::new(read_half);
            let mut headers = HashMap::new();
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                continue;
            }
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let mut log = log.lock().unwrap();
            let status = if fail_first && log.is_empty() {
                500
            } else {
                200
            };
            log.push((status, headers, body));
            drop(log);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, received)
}

/// The event names (`X-Segswarm-Event`) received so far, in order.
pub fn events(received: &Received) -> Vec<String> {
    received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, headers, _)| headers.get("x-segswarm-event").cloned().unwrap_or_default())
        .collect()
}
