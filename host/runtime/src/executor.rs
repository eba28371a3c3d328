//! Performs the calls engines start.
//!
//! Every started call becomes a tokio task that runs it through the tenant's
//! [`CloudBackend`]/[`KubeBackend`]. Two semaphores bound how many run at once: the tenant's own
//! (default [`DEFAULT_TENANT_CAP`]) and the process-wide one shared by every tenant (a tenant
//! permit is taken first, so a tenant waiting on its own cap holds no global permit). Each
//! completion is sent back to the tenant, which hands it to the engine in its next tick.
//!
//! Time comes from a [`Clock`]: [`SystemClock`] in production, [`ManualClock`] in tests and
//! virtual-time runs.

use crate::backend::{CloudBackend, KubeBackend};
use crate::correlation::CorrelationId;
use difftracker_engine::io::{Call, CallError, CallId, CallOutput, Completion, ErrorKind};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::Instrument;

/// Calls of one tenant in flight at once, by default.
pub const DEFAULT_TENANT_CAP: usize = 10;
/// Calls of all tenants in flight at once, by default.
pub const DEFAULT_GLOBAL_CAP: usize = 256;

// ------------------------------------------------------------------------ clocks

pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The tenant loop's notion of time, in milliseconds. Engines only ever see these values.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
    /// Resolves once `now_ms() >= deadline_ms`.
    fn sleep_until(&self, deadline_ms: u64) -> Sleep;
}

/// Wall-clock time: milliseconds since the Unix epoch, so deadlines in a snapshot stay
/// meaningful in another process.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }

    fn sleep_until(&self, deadline_ms: u64) -> Sleep {
        let wait = deadline_ms.saturating_sub(self.now_ms());
        Box::pin(tokio::time::sleep(std::time::Duration::from_millis(wait)))
    }
}

/// Time that moves only when told to ([`ManualClock::advance`], [`ManualClock::set`]).
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<watch::Sender<u64>>,
}

impl ManualClock {
    pub fn new(start_ms: u64) -> Self {
        ManualClock { now: Arc::new(watch::Sender::new(start_ms)) }
    }

    pub fn advance(&self, ms: u64) {
        self.now.send_modify(|now| *now = now.saturating_add(ms));
    }

    /// Moves time to `ms` (never backwards).
    pub fn set(&self, ms: u64) {
        self.now.send_modify(|now| *now = (*now).max(ms));
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline_ms: u64) -> Sleep {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; if it is gone, time has stopped for good.
            let _ = rx.wait_for(|now| *now >= deadline_ms).await;
        })
    }
}

// ------------------------------------------------------------------------ executor

/// The process-wide part of call execution: the clock and the global cap.
#[derive(Clone)]
pub struct Executor {
    clock: Arc<dyn Clock>,
    global: Arc<Semaphore>,
}

impl Executor {
    pub fn new(clock: Arc<dyn Clock>, global_cap: usize) -> Self {
        Executor { clock, global: Arc::new(Semaphore::new(global_cap.max(1))) }
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub(crate) fn global_semaphore(&self) -> Arc<Semaphore> {
        self.global.clone()
    }

    /// Calls of all tenants that could start right now without waiting on the global cap.
    pub fn global_permits_available(&self) -> usize {
        self.global.available_permits()
    }
}

/// Where one tenant's calls are performed.
#[derive(Clone)]
pub struct Backends {
    pub cloud: Arc<dyn CloudBackend>,
    pub kube: Arc<dyn KubeBackend>,
}

/// The resource a call is about, for logs: the resource names for ARM calls, the object's UID
/// for Kubernetes writes.
pub fn call_identity(call: &Call) -> String {
    use difftracker_engine::io::{CloudCall as C, KubeCall as K};
    match call {
        Call::Cloud(c) => match c {
            C::PutPublicIp { name, .. }
            | C::DeletePublicIp { name }
            | C::DeleteLoadBalancer { name }
            | C::DetachNatGateway { name, .. }
            | C::GetNatGateway { name }
            | C::DeleteNatGateway { name } => name.clone(),
            C::PutLoadBalancer(spec) => spec.name.clone(),
            C::PutNatGateway(spec) => spec.name.clone(),
            C::UpdateServices(requests) => requests.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(","),
            C::UpdateAddressLocations(locations) => format!("{} location(s)", locations.len()),
            C::ListPublicIps | C::ListLoadBalancers | C::ListNatGateways | C::GetSgwServices | C::GetAddressLocations => String::new(),
        },
        Call::Kube(k) => match k {
            K::AddServiceFinalizers(r)
            | K::RemoveServiceFinalizers(r)
            | K::PatchServiceIngress(r, _)
            | K::AddPodFinalizer(r)
            | K::RemovePodFinalizer(r) => r.uid.clone(),
        },
    }
}

/// One tenant's share of the executor: its backends, its cap, and where completions go.
pub(crate) struct CallRunner {
    pub(crate) tenant: String,
    pub(crate) backends: Backends,
    pub(crate) tenant_cap: Arc<Semaphore>,
    pub(crate) global: Arc<Semaphore>,
    pub(crate) done: mpsc::UnboundedSender<Completion>,
}

impl CallRunner {
    /// Starts `call` as a task; its completion arrives on `done`.
    pub(crate) fn spawn(&self, id: CallId, call: Call) {
        let label = call.label();
        let identity = call_identity(&call);
        let correlation = CorrelationId::of(&self.tenant, id, &call);
        let span =
            tracing::info_span!("call", tenant = %self.tenant, call_id = id, label, identity = %identity, correlation_id = %correlation);
        let tenant_cap = self.tenant_cap.clone();
        let global = self.global.clone();
        let backends = self.backends.clone();
        let done = self.done.clone();
        tokio::spawn(
            async move {
                let outcome = match (tenant_cap.acquire_owned().await, global.acquire_owned().await) {
                    (Ok(_tenant), Ok(_global)) => {
                        tracing::debug!("call running");
                        perform(&backends, call, correlation).await
                    }
                    _ => Err(CallError::of_kind(ErrorKind::Transport, "executor shut down")),
                };
                match &outcome {
                    Ok(_) => tracing::info!("call succeeded"),
                    Err(e) => tracing::warn!(error = %e, "call failed"),
                }
                // The tenant may be gone (shut down); its engine no longer needs the completion.
                let _ = done.send(Completion { id, outcome });
            }
            .instrument(span),
        );
    }
}

/// Runs the call on its backend in a task of its own, so a panicking backend becomes a failed
/// call instead of a completion that never comes.
async fn perform(backends: &Backends, call: Call, correlation: CorrelationId) -> Result<CallOutput, CallError> {
    let future = match call {
        Call::Cloud(c) => backends.cloud.call(c),
        Call::Kube(k) => backends.kube.call(k),
    };
    // The backend reads the id (the transport sends it to ARM); it runs in a task of its own.
    match tokio::spawn(crate::correlation::scope(correlation, future)).await {
        Ok(outcome) => outcome,
        Err(e) => Err(CallError::of_kind(ErrorKind::Transport, &format!("backend task failed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_only_when_time_reaches_the_deadline() {
        let clock = ManualClock::new(1_000);
        let mut sleep = clock.sleep_until(1_500);
        let waker = futures_noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        clock.advance(499);
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        clock.advance(1);
        sleep.await;
        assert_eq!(clock.now_ms(), 1_500);
        clock.set(10);
        assert_eq!(clock.now_ms(), 1_500, "time never goes backwards");
    }

    fn futures_noop_waker() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }

    #[test]
    fn call_identity_names_the_resource() {
        use difftracker_engine::io::{CloudCall, KubeCall, ObjectRef};
        let pip = Call::Cloud(CloudCall::PutPublicIp { name: "abc-pip".into(), version: difftracker_engine::io::IpVersion::V4 });
        assert_eq!(call_identity(&pip), "abc-pip");
        let fin = Call::Kube(KubeCall::AddServiceFinalizers(ObjectRef { namespace: "ns".into(), name: "n".into(), uid: "u1".into() }));
        assert_eq!(call_identity(&fin), "u1");
    }
}
