//! The one handle type of every HTTP server the host runs (observability here, the emulator in
//! the simulation kit): an axum router served on a listener until the handle is shut down or
//! dropped.

use axum::Router;
use std::net::SocketAddr;
use tokio::sync::oneshot;

/// A running HTTP server. Dropping it stops the server (without waiting).
pub struct ServerHandle {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ServerHandle {
    /// Serves `app` on `listener`; `what` names the server in the log line of a failure.
    pub fn spawn(listener: tokio::net::TcpListener, app: Router, what: &'static str) -> std::io::Result<ServerHandle> {
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, server = what, "HTTP server stopped");
            }
        });
        Ok(ServerHandle { addr, shutdown: Some(tx), task: Some(task) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits for it.
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
