//! One tenant's tick loop.
//!
//! A tenant owns one engine ([`EngineDriver`], already created or restored) and runs on tokio:
//! it sleeps until Kubernetes events arrive, a call completes, or the engine's `next_wake_ms`
//! comes, then delivers the events and ticks with every completion gathered so far. The calls the
//! tick started go to the executor ([`crate::executor`]); the Events it recorded go to the Kube
//! backend. Ticks of one tenant run one at a time (the loop owns the engine); ticks of different
//! tenants run in parallel, each on tokio's blocking pool, since a guest call is synchronous CPU
//! work bounded by the sandbox's deadline.
//!
//! Progress is published on a `watch` channel ([`TenantStatus`]) and, when an observer is
//! attached, as a stream of [`TenantEvent`]s (what the demo prints). A failing guest call ends the
//! loop with the error; other tenants are unaffected.

use crate::driver::{restore_into, EngineDriver, TickResult};
use crate::executor::{call_identity, Backends, CallRunner, Executor, DEFAULT_TENANT_CAP};
use anyhow::{anyhow, Result};
use difftracker_engine::io::{Call, CallError, CallId, CallOutput, Completion, EngineStatus, KubeEvent, KubeEventRecord};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

/// Requests to a running tenant loop, handled between ticks.
enum Control {
    /// Move the engine's state into this fresh instance and continue with it.
    Swap(Box<dyn EngineDriver>, oneshot::Sender<Result<()>>),
}

/// How a tenant runs.
#[derive(Clone, Debug)]
pub struct TenantOptions {
    /// Names the tenant in logs.
    pub name: String,
    /// Calls of this tenant in flight at once.
    pub max_calls_in_flight: usize,
}

impl TenantOptions {
    pub fn new(name: impl Into<String>) -> Self {
        TenantOptions { name: name.into(), max_calls_in_flight: DEFAULT_TENANT_CAP }
    }
}

/// What happened in a tenant, in order (for observers such as the demo's printer).
#[derive(Clone, Debug, PartialEq)]
pub enum TenantEvent {
    CallStarted { id: CallId, call: Call },
    CallCompleted { id: CallId, outcome: Result<CallOutput, CallError> },
    EventRecorded(KubeEventRecord),
    /// The engine's count of operations per state changed.
    StatesChanged(Vec<(String, u32)>),
}

/// The tenant's latest progress.
#[derive(Clone, Debug, Default)]
pub struct TenantStatus {
    pub ticks: u64,
    pub last_tick_ms: u64,
    pub next_wake_ms: Option<u64>,
    /// Calls started and not yet handed back to the engine.
    pub calls_outstanding: usize,
    pub engine: EngineStatus,
    /// Set when the loop stopped on an error.
    pub error: Option<String>,
    pub stopped: bool,
}

impl TenantStatus {
    /// Nothing in flight on either side and the engine says it has nothing left to do.
    pub fn is_idle(&self) -> bool {
        self.engine.settled && self.calls_outstanding == 0
    }

    pub fn state_count(&self, state: &str) -> u32 {
        self.engine.states.iter().find(|(s, _)| s == state).map(|(_, n)| *n).unwrap_or(0)
    }
}

/// The handle of a running tenant. Dropping it stops the loop.
pub struct TenantHandle {
    name: String,
    inputs: mpsc::UnboundedSender<Vec<KubeEvent>>,
    control: mpsc::UnboundedSender<Control>,
    status: watch::Receiver<TenantStatus>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<Box<dyn EngineDriver>>>,
}

impl TenantHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues Kubernetes events for the next tick.
    pub fn deliver(&self, events: Vec<KubeEvent>) -> Result<()> {
        self.inputs.send(events).map_err(|_| anyhow!("tenant {} is not running", self.name))
    }

    pub fn status(&self) -> TenantStatus {
        self.status.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<TenantStatus> {
        self.status.clone()
    }

    /// Waits until `done` holds for the tenant's status; fails if the loop stops first.
    pub async fn wait_for(&self, mut done: impl FnMut(&TenantStatus) -> bool) -> Result<TenantStatus> {
        let mut rx = self.status.clone();
        let status = rx
            .wait_for(|s| done(s) || s.stopped)
            .await
            .map_err(|_| anyhow!("tenant {} stopped", self.name))?
            .clone();
        match (&status.error, status.stopped && !done(&status)) {
            (Some(e), _) => Err(anyhow!("tenant {} failed: {e}", self.name)),
            (None, true) => Err(anyhow!("tenant {} stopped", self.name)),
            _ => Ok(status),
        }
    }

    /// Replaces the running engine with `fresh` (a new, empty instance, possibly of a newer
    /// component) between two ticks: snapshot of the old one, restore into the new one, switch.
    /// If that fails the old instance keeps running. Calls in flight complete into the new one.
    pub async fn swap_engine(&self, fresh: Box<dyn EngineDriver>) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.control.send(Control::Swap(fresh, tx)).map_err(|_| anyhow!("tenant {} is not running", self.name))?;
        rx.await.map_err(|_| anyhow!("tenant {} stopped during the swap", self.name))?
    }

    /// Stops the loop after its current tick and hands the engine back (for a swap or a final
    /// snapshot). Calls still in flight complete into nothing.
    pub async fn stop(self) -> Result<Box<dyn EngineDriver>> {
        let _ = self.stop.send(true);
        self.task.await.map_err(|e| anyhow!("tenant {} task failed: {e}", self.name))?
    }
}

/// Starts the tick loop of a tenant whose engine is already created (or restored).
pub fn spawn_tenant(
    executor: &Executor,
    options: TenantOptions,
    driver: Box<dyn EngineDriver>,
    backends: Backends,
    observer: Option<mpsc::UnboundedSender<TenantEvent>>,
) -> TenantHandle {
    let (inputs_tx, inputs_rx) = mpsc::unbounded_channel();
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (status_tx, status_rx) = watch::channel(TenantStatus::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let runner = CallRunner {
        tenant: options.name.clone(),
        backends,
        tenant_cap: Arc::new(Semaphore::new(options.max_calls_in_flight.max(1))),
        global: executor.global_semaphore(),
        done: done_tx,
    };
    let tenant = TenantLoop {
        name: options.name.clone(),
        executor: executor.clone(),
        runner,
        inputs: inputs_rx,
        control: control_rx,
        completions: done_rx,
        stop: stop_rx,
        status: status_tx,
        observer,
        outstanding: 0,
    };
    let task = tokio::spawn(tenant.run(driver));
    TenantHandle { name: options.name, inputs: inputs_tx, control: control_tx, status: status_rx, stop: stop_tx, task }
}

struct TenantLoop {
    name: String,
    executor: Executor,
    runner: CallRunner,
    inputs: mpsc::UnboundedReceiver<Vec<KubeEvent>>,
    control: mpsc::UnboundedReceiver<Control>,
    completions: mpsc::UnboundedReceiver<Completion>,
    stop: watch::Receiver<bool>,
    status: watch::Sender<TenantStatus>,
    observer: Option<mpsc::UnboundedSender<TenantEvent>>,
    outstanding: usize,
}

impl TenantLoop {
    async fn run(mut self, mut driver: Box<dyn EngineDriver>) -> Result<Box<dyn EngineDriver>> {
        let clock = self.executor.clock().clone();
        // Tick once at start: a restored engine may have calls due.
        let mut wake_now = true;
        let mut next_wake: Option<u64> = None;
        let mut events: Vec<KubeEvent> = Vec::new();
        let mut completions: Vec<Completion> = Vec::new();
        loop {
            if !wake_now {
                let sleep = next_wake.map(|at| clock.sleep_until(at));
                tokio::select! {
                    _ = self.stop.changed() => break,
                    Some(batch) = self.inputs.recv() => events.extend(batch),
                    Some(Control::Swap(fresh, reply)) = self.control.recv() => {
                        driver = swap_blocking(driver, fresh, reply).await;
                        // Tick the new instance at once: it may have work due.
                    }
                    Some(completion) = self.completions.recv() => completions.push(completion),
                    _ = async { sleep.expect("guarded").await }, if sleep.is_some() => {}
                }
            }
            if *self.stop.borrow() {
                break;
            }
            wake_now = false;
            while let Ok(batch) = self.inputs.try_recv() {
                events.extend(batch);
            }
            while let Ok(completion) = self.completions.try_recv() {
                completions.push(completion);
            }
            self.outstanding = self.outstanding.saturating_sub(completions.len());
            for c in &completions {
                self.observe(TenantEvent::CallCompleted { id: c.id, outcome: c.outcome.clone() });
            }

            let now = clock.now_ms();
            let ticked = tick_blocking(driver, now, std::mem::take(&mut events), std::mem::take(&mut completions)).await;
            let result = match ticked {
                Ok((returned, result)) => {
                    driver = returned;
                    result
                }
                Err(panic) => {
                    self.status.send_modify(|s| {
                        s.error = Some(panic.clone());
                        s.stopped = true;
                    });
                    return Err(anyhow!("tenant {}: {panic}", self.name));
                }
            };
            let (tick, engine_status) = match result {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(tenant = %self.name, error = %format!("{e:#}"), "engine failed; tenant stopped");
                    self.status.send_modify(|s| {
                        s.error = Some(format!("{e:#}"));
                        s.stopped = true;
                    });
                    return Err(e);
                }
            };
            next_wake = tick.outcome.next_wake_ms;
            self.after_tick(now, tick, engine_status);
        }
        self.status.send_modify(|s| s.stopped = true);
        Ok(driver)
    }

    fn after_tick(&mut self, now: u64, tick: TickResult, engine: EngineStatus) {
        for (id, call) in tick.started {
            tracing::info!(tenant = %self.name, call_id = id, label = call.label(), identity = %call_identity(&call), "call started");
            self.observe(TenantEvent::CallStarted { id, call: call.clone() });
            self.outstanding += 1;
            self.runner.spawn(id, call);
        }
        for event in tick.events {
            tracing::info!(tenant = %self.name, reason = %event.reason, object = %event.target.name, "event recorded");
            self.observe(TenantEvent::EventRecorded(event.clone()));
            self.runner.backends.kube.record_event(event);
        }
        let states_changed = self.status.borrow().engine.states != engine.states;
        if states_changed {
            tracing::info!(tenant = %self.name, states = ?engine.states, "operation states changed");
            self.observe(TenantEvent::StatesChanged(engine.states.clone()));
        }
        let outstanding = self.outstanding;
        self.status.send_modify(|s| {
            s.ticks += 1;
            s.last_tick_ms = now;
            s.next_wake_ms = tick.outcome.next_wake_ms;
            s.calls_outstanding = outstanding;
            s.engine = engine;
        });
    }

    fn observe(&self, event: TenantEvent) {
        if let Some(observer) = &self.observer {
            let _ = observer.send(event);
        }
    }
}

/// Restores the old engine's snapshot into `fresh` on the blocking pool; keeps the old engine if
/// anything fails.
async fn swap_blocking(
    mut old: Box<dyn EngineDriver>,
    fresh: Box<dyn EngineDriver>,
    reply: oneshot::Sender<Result<()>>,
) -> Box<dyn EngineDriver> {
    let work = tokio::task::spawn_blocking(move || match restore_into(old.as_mut(), fresh) {
        Ok(new) => (new, Ok(())),
        Err(e) => (old, Err(e)),
    });
    match work.await {
        Ok((driver, result)) => {
            if let Err(e) = &result {
                tracing::warn!(error = %format!("{e:#}"), "engine swap failed; the old instance keeps running");
            }
            let _ = reply.send(result);
            driver
        }
        // Only a native engine can panic here, and then nothing is left to run.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Delivers, ticks and reads the status on the blocking pool; the engine travels there and back.
async fn tick_blocking(
    mut driver: Box<dyn EngineDriver>,
    now: u64,
    events: Vec<KubeEvent>,
    completions: Vec<Completion>,
) -> Result<(Box<dyn EngineDriver>, Result<(TickResult, EngineStatus)>), String> {
    let work = tokio::task::spawn_blocking(move || {
        let result = (|| {
            if !events.is_empty() {
                driver.deliver(now, events)?;
            }
            let tick = driver.tick(now, completions)?;
            let status = driver.status()?;
            Ok((tick, status))
        })();
        (driver, result)
    });
    // Only a native engine can panic (a guest traps instead); its state went down with the task.
    work.await.map_err(|e| format!("engine panicked: {e}"))
}
