//! A loopback TCP proxy that can cut one pod off from Redis without a
//! network namespace: give the pod [`CutProxy::url`] as its `REDIS_URL`.
//!
//! [`CutProxy::cut`] makes it a black hole, like a firewall that DROPs the
//! pod's packets: connections stay open (new ones are still accepted), but
//! every byte either way is read and thrown away, so the pod's Redis calls
//! get no answer and run into their timeouts. [`CutProxy::restore`]
//! forwards again; the connections that lived through the cut are closed
//! first (a request cut in half would desynchronise them), so the pod
//! reconnects as after a real partition.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A proxy on `127.0.0.1:<port>` to one target address.
pub struct CutProxy {
    port: u16,
    shared: Arc<Shared>,
}

struct Shared {
    cut: AtomicBool,
    stop: AtomicBool,
    /// Both sockets of every proxied connection, to close them.
    connections: Mutex<Vec<(TcpStream, TcpStream)>>,
}

impl CutProxy {
    /// Starts forwarding every connection to `target`.
    pub fn start(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            cut: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
        });
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stop.load(Ordering::SeqCst) {
                    return;
                }
                let (Ok(client), Ok(upstream)) = (client, TcpStream::connect(target)) else {
                    continue;
                };
                accepting.track(&client, &upstream);
                pump(accepting.clone(), &client, &upstream);
                pump(accepting.clone(), &upstream, &client);
            }
        });
        CutProxy { port, shared }
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// From now on, nothing gets through either way.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
    }

    /// Closes the connections that saw the cut and forwards again.
    pub fn restore(&self) {
        self.shared.close_all();
        self.shared.cut.store(false, Ordering::SeqCst);
    }
}

impl Shared {
    fn track(&self, a: &TcpStream, b: &TcpStream) {
        if let (Ok(a), Ok(b)) = (a.try_clone(), b.try_clone()) {
            self.connections.lock().unwrap().push((a, b));
        }
    }

    fn close_all(&self) {
        for (a, b) in self.connections.lock().unwrap().drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

/// Copies `from` to `to` on a thread, dropping the bytes while cut.
fn pump(shared: Arc<Shared>, from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let read = match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            if shared.cut.load(Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&buffer[..read]).is_err() {
                break;
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.close_all();
        // Wakes the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
