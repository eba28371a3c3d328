//! The one handle type of every HTTP server the host runs (observability here, the emulator in
//! the simulation kit): an axum router served on a listener until the handle is shut down or
//! dropped.
//!
//! Connections are served with hyper's HTTP/1 server directly (axum's `serve` has no knobs):
//! a client must send each request's head within [`ServerOptions::header_read_timeout`] (an idle
//! keep-alive connection is closed after it too), and at most
//! [`ServerOptions::max_connections`] connections are served at once; further ones wait in the
//! listen backlog, unaccepted, until one closes. So half-open connections cost a bounded number
//! of slots for a bounded time.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch, Semaphore};

/// Limits of a served connection.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Time a client has to send a request's whole head, counted from the connection's start or
    /// the end of its previous response (an idle keep-alive connection is closed after it too);
    /// 10 s.
    pub header_read_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog until one closes
    /// (1024).
    pub max_connections: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions { header_read_timeout: Duration::from_secs(10), max_connections: 1024 }
    }
}

/// A running HTTP server. Dropping it stops the server (without waiting).
pub struct ServerHandle {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ServerHandle {
    /// Serves `app` on `listener` with the default [`ServerOptions`]; `what` names the server in
    /// the log line of a failure.
    pub fn spawn(listener: tokio::net::TcpListener, app: Router, what: &'static str) -> std::io::Result<ServerHandle> {
        Self::spawn_with(listener, app, what, ServerOptions::default())
    }

    /// Serves `app` on `listener` under `options`.
    pub fn spawn_with(
        listener: tokio::net::TcpListener,
        app: Router,
        what: &'static str,
        options: ServerOptions,
    ) -> std::io::Result<ServerHandle> {
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, app, what, options, rx));
        Ok(ServerHandle { addr, shutdown: Some(tx), task: Some(task) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits for it: no new connection is accepted, open ones finish the
    /// request they are serving (one still sending its head has until the header timeout).
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The accept loop: one slot per connection, each served on its own task.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    what: &'static str,
    options: ServerOptions,
    mut stop: oneshot::Receiver<()>,
) {
    let max = options.max_connections.clamp(1, u32::MAX as usize >> 1);
    let slots = Arc::new(Semaphore::new(max));
    let (closing, _) = watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(options.header_read_timeout);
    loop {
        let slot = tokio::select! {
            _ = &mut stop => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::debug!(error = %e, server = what, "accepting a connection failed");
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let mut closing = closing.subscribe();
        tokio::spawn(async move {
            let _slot = slot;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, server = what, "connection ended");
                    }
                }
                _ = closing.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    let _ = closing.send(true);
    // Every slot back: every connection closed.
    let _ = slots.acquire_many(max as u32).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    fn app() -> Router {
        Router::new().route("/ping", axum::routing::get(|| async { "pong" }))
    }

    async fn get(url: &str) -> reqwest::Result<String> {
        reqwest::Client::new().get(url).send().await?.error_for_status()?.text().await
    }

    /// Reads until the server closes the connection; `None` if it is still open after the guard.
    async fn closed_within(mut conn: TcpStream, guard: Duration) -> Option<Vec<u8>> {
        let mut answer = Vec::new();
        match tokio::time::timeout(guard, conn.read_to_end(&mut answer)).await {
            Ok(_) => Some(answer),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn connections_that_never_finish_their_request_head_are_closed_and_others_are_served() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let options = ServerOptions { header_read_timeout: Duration::from_millis(300), ..ServerOptions::default() };
        let server = ServerHandle::spawn_with(listener, app(), "test", options).unwrap();
        let mut idle = Vec::new();
        for i in 0..50 {
            let mut conn = TcpStream::connect(server.addr()).await.unwrap();
            // Half a request line (or nothing at all), and then silence.
            if i % 5 != 0 {
                conn.write_all(b"GET /ping HT").await.unwrap();
            }
            idle.push(conn);
        }
        assert_eq!(get(&format!("{}/ping", server.url())).await.unwrap(), "pong", "served meanwhile");
        for (i, conn) in idle.into_iter().enumerate() {
            let answer = closed_within(conn, Duration::from_secs(30)).await;
            assert!(answer.is_some(), "half-open connection {i} is still open");
        }
        assert_eq!(get(&format!("{}/ping", server.url())).await.unwrap(), "pong");
        server.shutdown().await;
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_until_one_closes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let options = ServerOptions { header_read_timeout: Duration::from_secs(600), max_connections: 2 };
        let server = ServerHandle::spawn_with(listener, app(), "test", options).unwrap();
        let first = TcpStream::connect(server.addr()).await.unwrap();
        let _second = TcpStream::connect(server.addr()).await.unwrap();
        let url = format!("{}/ping", server.url());
        let waiting = tokio::spawn(async move { get(&url).await });
        // The third connection is not served while two are open (a negative check: a slow
        // machine only makes it pass more easily)...
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!waiting.is_finished(), "a third connection was served beyond the limit of 2");
        // ... and is once one of them closes.
        drop(first);
        let answer = tokio::time::timeout(Duration::from_secs(30), waiting).await.expect("guard: served").unwrap();
        assert_eq!(answer.unwrap(), "pong");
        server.shutdown().await;
    }

    #[tokio::test]
    async fn the_observability_server_closes_half_open_connections() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let options = ServerOptions { header_read_timeout: Duration::from_millis(300), ..ServerOptions::default() };
        let server = crate::observe::serve_with(listener, crate::observe::Observatory::new(), options).await.unwrap();
        let mut conn = TcpStream::connect(server.addr()).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let metrics = reqwest::get(format!("{}/metrics", server.url())).await.unwrap();
        assert_eq!(metrics.status(), 200);
        assert!(closed_within(conn, Duration::from_secs(30)).await.is_some(), "the half-open connection is still open");
        server.shutdown().await;
    }
}
