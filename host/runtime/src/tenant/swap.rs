//! Hot swap: the running instance's state moved into a fresh one between two ticks. The old
//! instance keeps running if anything fails; calls in flight complete into the new one.

use super::recovery::{guarded, Checkpoint, EngineFactory, GuardedEngine, GuestFailure, TickReport};
use crate::driver::EngineDriver;
use anyhow::{anyhow, Result};
use tokio::sync::oneshot;

/// Restores the running engine's snapshot into `fresh` on the blocking pool; keeps the old engine
/// if anything fails (a recovering tenant rebuilds it if taking its snapshot trapped).
pub(super) async fn swap_blocking(
    mut engine: GuardedEngine,
    tick_no: u64,
    fresh: Box<dyn EngineDriver>,
    factory: Option<EngineFactory>,
    reply: oneshot::Sender<Result<()>>,
) -> (Option<GuardedEngine>, TickReport, Result<()>) {
    let work = tokio::task::spawn_blocking(move || {
        let mut report = TickReport::default();
        let result = engine.swap(tick_no, fresh, factory, &mut report);
        (engine, report, result)
    });
    match work.await {
        Ok((engine, report, Ok(swapped))) => {
            if let Err(e) = &swapped {
                tracing::warn!(tenant = %engine.name, error = %format!("{e:#}"), "engine swap failed; the old instance keeps running");
            }
            let _ = reply.send(swapped);
            (Some(engine), report, Ok(()))
        }
        Ok((engine, report, Err(fatal))) => {
            let _ = reply.send(Err(anyhow!("the swap failed and the old instance could not be recovered: {fatal:#}")));
            (Some(engine), report, Err(fatal))
        }
        Err(e) => {
            let _ = reply.send(Err(anyhow!("the swap task failed: {e}")));
            (None, TickReport::default(), Err(anyhow!("the swap task failed: {e}")))
        }
    }
}

impl GuardedEngine {
    /// Hot swap: the running instance's snapshot restored into `fresh`, which becomes the running
    /// instance (and that snapshot the checkpoint). `Ok(Err(_))`: the swap failed and the old
    /// instance keeps running; `Err(_)`: nothing is left to run.
    fn swap(
        &mut self,
        tick_no: u64,
        mut fresh: Box<dyn EngineDriver>,
        factory: Option<EngineFactory>,
        out: &mut TickReport,
    ) -> Result<Result<()>> {
        let snapshot = match guarded(&mut self.driver, |d| d.snapshot()) {
            Ok(snapshot) => snapshot,
            Err(GuestFailure::Refused(e)) => return Ok(Err(e.context("taking the running engine's snapshot"))),
            Err(GuestFailure::Poisoned(reason)) => {
                let error = anyhow!("taking the running engine's snapshot: {reason}");
                if self.recovery.is_some() {
                    self.restart(tick_no, &format!("{error:#}"), out)?;
                }
                return Ok(Err(error));
            }
        };
        if let Err(failure) = guarded(&mut fresh, |d| d.restore(&snapshot)) {
            return Ok(Err(failure.into_error().context("restoring the snapshot into the new instance")));
        }
        let next_call_id = fresh.call_ids().peek();
        self.driver = fresh;
        if let Some(recovery) = &mut self.recovery {
            if let Some(factory) = factory {
                recovery.options.factory = factory;
            }
            // The log belonged to the old instance's checkpoint: start over from this snapshot.
            recovery.start_over(Checkpoint { snapshot, next_call_id });
        }
        Ok(Ok(()))
    }
}
