//! A TCP proxy in front of the local Postgres, for faults no database offers on its own: a
//! connection that stops answering mid-stream while its socket stays open (a failover, a
//! half-open connection), and a server that cannot be reached at all for a while.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with the bytes and connections it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Passes everything through.
    Forward,
    /// Keeps every socket open but passes no byte either way (held until forwarding resumes).
    Stall,
    /// Closes every connection it has and every new one at once (a server that is down).
    Refuse,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        // Ends the pipes too (they return once the mode channel closes or reads Refuse).
        let _ = self.mode.send(Mode::Refuse);
    }
}

impl Proxy {
    /// A proxy forwarding to the test Postgres server.
    pub async fn to_postgres() -> Proxy {
        let server = crate::helpers::server_url();
        let hostport = server
            .rsplit('@')
            .next()
            .unwrap()
            .trim_start_matches("postgres://");
        let upstream = tokio::net::lookup_host(hostport)
            .await
            .expect("resolve the test Postgres")
            .next()
            .expect("an address for the test Postgres");
        Proxy::start(upstream).await
    }

    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, watching) = watch::channel(Mode::Forward);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if *watching.borrow() == Mode::Refuse {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pipe(client_read, server_write, watching.clone()));
                tokio::spawn(pipe(server_read, client_write, watching.clone()));
            }
        });
        Proxy { addr, mode, task }
    }

    /// `url` (a database of the test server) reached through this proxy.
    pub fn url(&self, url: &str) -> String {
        let database = url.rsplit('/').next().unwrap();
        let server = crate::helpers::server_url();
        let user = server
            .trim_start_matches("postgres://")
            .split('@')
            .next()
            .unwrap();
        format!("postgres://{user}@{}/{database}", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

/// One direction of one connection.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = mode.wait_for(|m| *m == Mode::Refuse) => return,
        };
        // Held here while stalled: the socket stays open and nothing more is read from it.
        match mode.wait_for(|m| *m != Mode::Stall).await {
            Ok(m) if *m == Mode::Forward => {}
            _ => return,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
