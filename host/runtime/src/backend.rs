//! Where the engine's calls are performed. The executor hands every started call to a backend;
//! mocks (tests), the ARM/NRP HTTP transport and the in-process emulator all implement these.

use difftracker_engine::io::{CallError, CallOutput, CloudCall, KubeCall, KubeEventRecord};
use std::future::Future;
use std::pin::Pin;

pub type CallFuture = Pin<Box<dyn Future<Output = Result<CallOutput, CallError>> + Send + 'static>>;

/// Performs ARM/NRP calls. Implementations build URLs from their tenant's configuration.
pub trait CloudBackend: Send + Sync + 'static {
    fn call(&self, call: CloudCall) -> CallFuture;
}

/// Performs Kubernetes writes and records Events.
pub trait KubeBackend: Send + Sync + 'static {
    fn call(&self, call: KubeCall) -> CallFuture;
    fn record_event(&self, event: KubeEventRecord);
}
