//! A TCP relay between one pod and a Redis server, that a test can cut: the
//! pod is then alone (its connections closed, new ones refused) while the
//! other pods of the cluster keep their Redis. Threads only; the relay
//! stops with the test process.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A relay on a free loopback port to `target`.
pub struct RedisRelay {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    cut: AtomicBool,
    /// Both ends of every relayed connection, to close them on a cut.
    open: Mutex<Vec<TcpStream>>,
}

/// Copies `from` into `to` until either end closes.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

impl RedisRelay {
    /// Starts relaying connections to `target` (a Redis `host:port`).
    pub fn start(target: SocketAddr) -> RedisRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let shared = Arc::new(Shared {
            cut: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
        });
        let relay = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if relay.cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                {
                    let mut open = relay.open.lock().unwrap();
                    if let (Ok(a), Ok(b)) = (client.try_clone(), server.try_clone()) {
                        open.push(a);
                        open.push(b);
                    }
                }
                std::thread::spawn(move || pump(client, server_copy));
                std::thread::spawn(move || pump(server, client_copy));
            }
        });
        RedisRelay { addr, shared }
    }

    /// `redis://127.0.0.1:<relay port>/`.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Closes every relayed connection and refuses new ones until
    /// [`RedisRelay::restore`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        for stream in self.shared.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }
}
