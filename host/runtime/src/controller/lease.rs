//! Leader election over a `coordination.k8s.io/v1` Lease, with the rules client-go's
//! leaderelection package follows, written directly on kube-rs:
//!
//! - **Acquire**: a candidate reads the Lease every [`LeaseOptions::retry_period`]. It may take
//!   the Lease when it is absent (create), has no holder (released), or has not changed for
//!   [`LeaseOptions::lease_duration`] as measured on the candidate's own clock since it last saw
//!   it change. Clocks of different replicas are never compared: a Lease's `renewTime` is only
//!   ever compared with the same Lease's earlier `renewTime`. Every write is an update guarded
//!   by the resourceVersion just read, so two candidates never both win (the loser gets 409).
//! - **Renew**: the leader rewrites `renewTime` every retry period.
//! - **Fencing**: a leader is leading only until [`LeaseOptions::renew_deadline`] after the send
//!   time of its last successful renew ([`Fence::is_leading`] checks that instant, so a stuck
//!   renewal task cannot stretch it). The renew deadline is shorter than the lease duration, so
//!   a leader that cannot renew stops starting calls before any standby may take the Lease.
//! - **Release**: on a clean shutdown the holder clears `holderIdentity`, so a standby takes over
//!   at its next retry instead of waiting out the lease duration.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Where the Lease is and its timing (client-go's defaults: 15 s, 10 s, 2 s).
#[derive(Clone, Debug)]
pub struct LeaseOptions {
    pub namespace: String,
    pub name: String,
    /// This replica's `holderIdentity`; unique per process.
    pub identity: String,
    /// How long a Lease that stops changing keeps standbys away.
    pub lease_duration: Duration,
    /// How long after its last successful renew a leader keeps leading; less than the lease
    /// duration.
    pub renew_deadline: Duration,
    /// Time between two attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseOptions {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, identity: impl Into<String>) -> LeaseOptions {
        LeaseOptions {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// The timing rules client-go enforces: a renew deadline shorter than the lease duration
    /// (else a standby could take over while the leader still leads) and a retry period that
    /// fits into the renew deadline more than once.
    pub fn validate(&self) -> Result<(), String> {
        if self.namespace.is_empty() || self.name.is_empty() {
            return Err("the leader-election Lease needs a namespace and a name".into());
        }
        if self.identity.is_empty() {
            return Err("the leader-election identity is empty".into());
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?})",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_period.is_zero() || self.retry_period.mul_f64(1.2) >= self.renew_deadline {
            return Err(format!(
                "the retry period ({:?}) must be positive and well below the renew deadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        if self.lease_duration.as_secs() < 1 || self.lease_duration.as_secs() > i32::MAX as u64 {
            return Err(format!("the lease duration ({:?}) must be whole seconds, at least 1", self.lease_duration));
        }
        Ok(())
    }
}

/// Whether this replica may start calls now, and the calls it let through. Cheap to clone and
/// to check.
#[derive(Clone, Debug)]
pub struct Fence {
    valid_until: Arc<Mutex<Option<Instant>>>,
    /// Calls started through [`Fence::admit`] and not yet finished.
    in_flight: Arc<AtomicUsize>,
    /// How long after the fence came down a call still running is abandoned; `None`: never.
    /// The lease duration less the renew deadline, so that a call of a replica that lost its
    /// Lease is over before any other replica may take the Lease.
    grace: Option<Duration>,
}

impl Fence {
    pub(crate) fn until(at: Option<Instant>) -> Fence {
        Fence { valid_until: Arc::new(Mutex::new(at)), in_flight: Arc::default(), grace: None }
    }

    /// This fence, cutting calls still running `grace` after it came down.
    pub(crate) fn with_grace(mut self, grace: Duration) -> Fence {
        self.grace = Some(grace);
        self
    }

    /// When a call admitted now must be over: `None` when calls are never cut.
    pub fn cutoff(&self) -> Option<Instant> {
        let grace = self.grace?;
        Some(self.valid_until().map_or_else(Instant::now, |t| t + grace))
    }

    /// A fence that always leads (no leader election).
    pub fn always() -> Fence {
        Fence::until(Some(Instant::now() + Duration::from_secs(100 * 365 * 86_400)))
    }

    pub(crate) fn set(&self, at: Option<Instant>) {
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    /// The instant this replica stops leading unless it renews first.
    pub fn valid_until(&self) -> Option<Instant> {
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_leading(&self) -> bool {
        self.valid_until().is_some_and(|t| Instant::now() < t)
    }

    /// A call about to start: `None` when this replica no longer leads; else a token that
    /// counts the call in [`Fence::in_flight`] until it is dropped.
    pub fn admit(&self) -> Option<Admitted> {
        if !self.is_leading() {
            return None;
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Some(Admitted(self.in_flight.clone()))
    }

    /// Calls admitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until every admitted call has finished, or `bound` passed; true when drained.
    pub async fn drained(&self, bound: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        while self.in_flight() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// One call a [`Fence`] let through; it counts as in flight until dropped.
#[derive(Debug)]
pub struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the elector last saw of the Lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: String,
    pub transitions: i32,
}

/// Counts for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseStats {
    pub acquired: u64,
    pub renewed: u64,
    pub lost: u64,
    /// Attempts that failed on the API server (not "someone else holds it").
    pub errors: u64,
    pub last_error: Option<String>,
    /// The holder of the Lease as last read.
    pub observed: LeaseRecord,
}

/// One replica's side of the election. [`LeaderElector::acquire`] waits until it leads; then
/// [`LeaderElector::keep_leading`] renews until the lease is lost (it returns) or the caller
/// stops polling it and calls [`LeaderElector::release`].
pub struct LeaderElector {
    api: Api<Lease>,
    options: LeaseOptions,
    fence: Fence,
    /// The Lease's spec as last read, and when this replica saw it change (its own clock).
    observed: Option<(LeaseSpec, Instant)>,
    stats: watch::Sender<LeaseStats>,
}

enum Attempt {
    /// We hold the Lease; the fence runs until `sent + renew_deadline`.
    Held {
        sent: Instant,
    },
    /// Another replica holds it.
    Taken,
    Failed(String),
}

impl LeaderElector {
    pub fn new(client: Client, options: LeaseOptions) -> Result<LeaderElector, String> {
        options.validate()?;
        let api = Api::namespaced(client, &options.namespace);
        let fence = Fence::until(None).with_grace(options.lease_duration - options.renew_deadline);
        Ok(LeaderElector { api, options, fence, observed: None, stats: watch::channel(LeaseStats::default()).0 })
    }

    pub fn options(&self) -> &LeaseOptions {
        &self.options
    }

    /// The fence of this replica's leadership (false until acquired; false again once lost).
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    pub fn stats(&self) -> watch::Receiver<LeaseStats> {
        self.stats.subscribe()
    }

    fn record(&self, f: impl FnOnce(&mut LeaseStats)) {
        self.stats.send_modify(f);
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Attempt::Held { sent } => {
                    self.fence.set(Some(sent + self.options.renew_deadline));
                    self.record(|s| s.acquired += 1);
                    tracing::info!(lease = %self.options.name, identity = %self.options.identity, "acquired the leader lease");
                    return;
                }
                Attempt::Taken => {}
                Attempt::Failed(e) => self.failed(e),
            }
            tokio::time::sleep(jittered(self.options.retry_period)).await;
        }
    }

    /// Renews every retry period while leading; returns once leadership is lost (the renew
    /// deadline passed without a successful renew, or another replica holds the Lease). The
    /// fence is down when it returns.
    pub async fn keep_leading(&mut self) {
        loop {
            tokio::time::sleep(self.options.retry_period).await;
            if !self.fence.is_leading() {
                break;
            }
            match self.try_acquire_or_renew().await {
                Attempt::Held { sent } => {
                    self.fence.set(Some(sent + self.options.renew_deadline));
                    self.record(|s| s.renewed += 1);
                }
                Attempt::Taken => {
                    self.fence.set(None);
                    break;
                }
                Attempt::Failed(e) => self.failed(e),
            }
            if !self.fence.is_leading() {
                break;
            }
        }
        self.fence.set(None);
        self.record(|s| s.lost += 1);
        tracing::warn!(lease = %self.options.name, identity = %self.options.identity, "lost the leader lease: stopped starting calls");
    }

    /// Gives the Lease up (clean shutdown) so a standby takes it at its next attempt. The fence
    /// goes down first, whatever the API server answers.
    pub async fn release(&mut self) {
        let held = self.fence.is_leading();
        self.fence.set(None);
        if !held {
            return;
        }
        let Ok(mut lease) = self.api.get(&self.options.name).await else { return };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.options.identity.as_str()) {
            return;
        }
        release_spec(spec);
        match self.api.replace(&self.options.name, &PostParams::default(), &lease).await {
            Ok(_) => tracing::info!(lease = %self.options.name, "released the leader lease"),
            Err(e) => tracing::warn!(lease = %self.options.name, error = %e, "could not release the leader lease"),
        }
    }

    fn failed(&self, e: String) {
        tracing::warn!(lease = %self.options.name, error = %e, "leader election attempt failed");
        self.record(|s| {
            s.errors += 1;
            s.last_error = Some(e);
        });
    }

    /// One round: create the Lease, renew it, or take it over once it expired.
    async fn try_acquire_or_renew(&mut self) -> Attempt {
        let sent = Instant::now();
        let now = MicroTime(Timestamp::now());
        let me = self.options.identity.clone();
        let current = match self.api.get_opt(&self.options.name).await {
            Ok(c) => c,
            Err(e) => return Attempt::Failed(format!("reading Lease {}/{}: {e}", self.options.namespace, self.options.name)),
        };
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.options.name.clone()),
                    namespace: Some(self.options.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(held_spec(None, &me, self.options.lease_duration, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Attempt::Held { sent }
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Attempt::Taken,
                Err(e) => Attempt::Failed(format!("creating Lease {}/{}: {e}", self.options.namespace, self.options.name)),
            };
        };
        self.observe(&lease);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if !holder.is_empty() && holder != me {
            // Held by another replica: free only once it has not changed for its duration.
            let lease_for =
                spec.lease_duration_seconds.filter(|s| *s > 0).map_or(self.options.lease_duration, |s| Duration::from_secs(s as u64));
            let changed_at = self.observed.as_ref().map_or(sent, |(_, at)| *at);
            if changed_at.elapsed() < lease_for {
                return Attempt::Taken;
            }
        }
        lease.spec = Some(held_spec(Some(spec), &me, self.options.lease_duration, now));
        // Guarded by the resourceVersion just read: a concurrent writer makes this a 409.
        match self.api.replace(&self.options.name, &PostParams::default(), &lease).await {
            Ok(written) => {
                self.observe(&written);
                Attempt::Held { sent }
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Attempt::Taken,
            Err(e) => Attempt::Failed(format!("updating Lease {}/{}: {e}", self.options.namespace, self.options.name)),
        }
    }

    /// Notes what the Lease holds; its change time is when this replica first saw this version.
    fn observe(&mut self, lease: &Lease) {
        let spec = lease.spec.clone().unwrap_or_default();
        let changed = match &self.observed {
            Some((old, _)) => old.holder_identity != spec.holder_identity || old.renew_time != spec.renew_time,
            None => true,
        };
        if changed {
            self.observed = Some((spec.clone(), Instant::now()));
        }
        self.record(|s| {
            s.observed =
                LeaseRecord { holder: spec.holder_identity.clone().unwrap_or_default(), transitions: spec.lease_transitions.unwrap_or(0) }
        });
    }
}

/// The spec of a Lease `me` holds from `now` for `duration`: a new Lease (`previous` is `None`),
/// a renewal (its acquire time and transitions kept) or a takeover (acquired now; one more
/// transition when someone held it), as client-go writes them.
pub(crate) fn held_spec(previous: Option<LeaseSpec>, me: &str, duration: Duration, now: MicroTime) -> LeaseSpec {
    let spec = previous.unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let taking_over = holder != me;
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(duration.as_secs() as i32),
        acquire_time: if taking_over { Some(now.clone()) } else { spec.acquire_time.clone() },
        renew_time: Some(now),
        lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(taking_over && !holder.is_empty())),
        ..spec
    }
}

/// Empties a Lease this replica gives up, so the next replica may take it at once rather than
/// after its duration (client-go's release).
pub(crate) fn release_spec(spec: &mut LeaseSpec) {
    spec.holder_identity = None;
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    spec.lease_duration_seconds = Some(1);
}

/// `d` plus up to a fifth more, so replicas started together do not retry in step (client-go's
/// jitter factor). The clock's nanoseconds and the process id stand in for a random source.
pub(crate) fn jittered(d: Duration) -> Duration {
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let nanos = clock.subsec_nanos() ^ std::process::id();
    d + d.mul_f64(0.2 * f64::from(nanos % 1000) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> MicroTime {
        MicroTime(Timestamp::from_second(second).unwrap())
    }

    #[test]
    fn a_held_spec_keeps_a_renewal_s_acquire_time_and_counts_only_real_takeovers() {
        let ten = Duration::from_secs(10);
        let new = held_spec(None, "r1", ten, at(100));
        assert_eq!((new.holder_identity.as_deref(), new.lease_duration_seconds, new.lease_transitions), (Some("r1"), Some(10), Some(0)));
        assert_eq!(new.acquire_time, Some(at(100)));
        let renewed = held_spec(Some(new.clone()), "r1", ten, at(105));
        assert_eq!(
            (renewed.acquire_time.clone(), renewed.renew_time.clone(), renewed.lease_transitions),
            (Some(at(100)), Some(at(105)), Some(0))
        );
        let taken = held_spec(Some(renewed), "r2", ten, at(130));
        assert_eq!(
            (taken.holder_identity.as_deref(), taken.acquire_time.clone(), taken.lease_transitions),
            (Some("r2"), Some(at(130)), Some(1))
        );
        let mut released = taken;
        release_spec(&mut released);
        assert_eq!((released.holder_identity.as_deref(), released.lease_duration_seconds), (None, Some(1)));
        let after_release = held_spec(Some(released), "r3", ten, at(140));
        assert_eq!(after_release.lease_transitions, Some(1), "taking an empty Lease is no transition");
    }

    #[test]
    fn a_fence_counts_the_calls_it_admitted_until_they_end() {
        let fence = Fence::until(Some(Instant::now() + Duration::from_secs(60)));
        let a = fence.admit().expect("leading");
        let b = fence.admit().expect("leading");
        assert_eq!(fence.in_flight(), 2);
        drop(a);
        assert_eq!(fence.in_flight(), 1);
        fence.set(None);
        assert!(fence.admit().is_none(), "no call starts once the fence is down");
        drop(b);
        assert_eq!(fence.in_flight(), 0);
    }

    #[test]
    fn calls_are_cut_a_grace_after_the_fence_comes_down_and_never_without_a_grace() {
        let until = Instant::now() + Duration::from_secs(10);
        assert_eq!(Fence::until(Some(until)).cutoff(), None, "leader election off: calls are never cut");
        let fence = Fence::until(Some(until)).with_grace(Duration::from_secs(5));
        assert_eq!(fence.cutoff(), Some(until + Duration::from_secs(5)));
        // Released or lost: whatever still runs is cut now.
        fence.set(None);
        assert!(fence.cutoff().is_some_and(|c| c <= Instant::now()));
    }

    #[tokio::test]
    async fn drained_waits_for_the_last_call_or_gives_up_at_its_bound() {
        let fence = Fence::always();
        let call = fence.admit().unwrap();
        assert!(!fence.drained(Duration::from_millis(50)).await, "a call still runs");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(call);
        });
        assert!(fence.drained(Duration::from_secs(30)).await);
    }
}
