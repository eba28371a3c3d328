//! Tenants sharded over several replicas of `difftracker serve`, with `coordination.k8s.io/v1`
//! Leases in a management cluster (`--shard-lease-namespace NS`): no protocol of our own.
//!
//! In the namespace, each tenant has a Lease `difftracker-tenant-<tenant>` and each replica a
//! Lease `difftracker-replica-<identity>` (its membership). Every [`ShardOptions::retry_period`]
//! a replica runs one **round**:
//!
//! 1. it lists the namespace's Leases (one request) and renews its own membership (a replica
//!    takes no tenant in its first round, so that replicas started together see each other);
//! 2. it renews each tenant Lease it owns that is due (every `renew_deadline / 3`, at least a
//!    round apart), guarded by the resourceVersion it last wrote, and moves that tenant's
//!    [`Fence`] to `send time + renew_deadline`. A tenant whose Lease is
//!    taken, or whose fence came down because renewals kept failing, is stopped here;
//! 3. it plans ([`plan`]): with `n` live replicas and `T` tenants a replica takes free or
//!    expired Leases until it owns `ceil(T / n)` (more only when no other replica has room), and
//!    hands over up to [`ShardOptions::max_moves`] tenants while it owns two or more above the
//!    least loaded live replica and no Lease is free;
//! 4. a tenant acquired starts with its fence (the start-up pass from the cloud and the
//!    cluster, as after any restart); a tenant handed over is stopped, its calls in flight are
//!    let finish (or cut at the fence's cutoff), and only then is its Lease released.
//!
//! **Safety** is the Lease rules of [`crate::controller::lease`]: a Lease is expired only once
//! this replica has seen it unchanged for its duration on its own clock, while its holder stops
//! starting calls `renew_deadline` after its last successful renew and cuts the calls still in
//! flight `lease_duration - renew_deadline` later. So a tenant's calls never come from two
//! replicas at once, whatever the network does. Leases are written only with the
//! resourceVersion read, so two replicas never both win one (the loser gets 409).
//!
//! On a clean shutdown ([`Sharder::stop`]) every tenant is stopped and handed over, and the
//! membership Lease is emptied, so the others take over at their next round.

use super::TenantHost;
use crate::controller::lease::{held_spec, jittered, release_spec};
use crate::controller::Fence;
use futures_util::stream::{self, StreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Name prefix of a tenant's Lease.
pub const TENANT_LEASE_PREFIX: &str = "difftracker-tenant-";
/// Name prefix of a replica's membership Lease.
pub const REPLICA_LEASE_PREFIX: &str = "difftracker-replica-";
/// Label on every Lease of the shard: `tenant` or `replica`.
pub const ROLE_LABEL: &str = "difftracker.io/shard";
/// Lease writes of one round in flight at once.
const WRITES_AT_ONCE: usize = 16;

/// Where the Leases are and their timing.
#[derive(Clone, Debug)]
pub struct ShardOptions {
    pub namespace: String,
    /// This replica's `holderIdentity`; unique per process.
    pub identity: String,
    /// How long a Lease that stops changing keeps other replicas away (15 s).
    pub lease_duration: Duration,
    /// How long after its last successful renew a replica keeps starting a tenant's calls (10 s).
    pub renew_deadline: Duration,
    /// Time between two rounds (2 s).
    pub retry_period: Duration,
    /// Tenants handed over at most per round when rebalancing (10): each move costs the
    /// tenant a start-up pass on its new owner.
    pub max_moves: usize,
}

impl ShardOptions {
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> ShardOptions {
        ShardOptions {
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            max_moves: 10,
        }
    }

    /// The timing rules of leader election (a renew deadline shorter than the lease duration,
    /// a retry period well inside the deadline) and a usable namespace and identity.
    pub fn validate(&self) -> Result<(), String> {
        let as_lease = crate::controller::LeaseOptions {
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
            ..crate::controller::LeaseOptions::new(&self.namespace, "shard", &self.identity)
        };
        as_lease.validate().map_err(|e| format!("sharding: {e}"))?;
        if self.max_moves == 0 {
            return Err("sharding: the rebalancing cap must be at least 1".into());
        }
        Ok(())
    }

    /// How often an owned tenant's Lease is renewed: three tries fit into the renew deadline
    /// (as a node's Lease is renewed at a quarter of its duration), never more often than a round.
    fn renew_interval(&self) -> Duration {
        (self.renew_deadline / 3).max(self.retry_period)
    }

    /// How long after the fence came down a call still running is cut.
    fn grace(&self) -> Duration {
        self.lease_duration - self.renew_deadline
    }
}

/// The Lease name of a tenant.
pub fn tenant_lease(tenant: &str) -> String {
    format!("{TENANT_LEASE_PREFIX}{tenant}")
}

/// The Lease name of a replica: its identity made a valid object name.
pub fn replica_lease(identity: &str) -> String {
    let clean: String =
        identity.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c.to_ascii_lowercase() } else { '-' }).collect();
    let clean = clean.trim_matches(|c| c == '-' || c == '.');
    format!("{REPLICA_LEASE_PREFIX}{}", &clean[..clean.len().min(200)])
}

/// A tenant's Lease as one replica sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holding {
    /// No Lease, or one released (no holder).
    Free,
    /// Held by this replica's identity.
    Mine,
    /// Held by another replica; `expired` once it has not changed for its duration here.
    Other { holder: String, expired: bool },
}

/// What one round decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub acquire: Vec<String>,
    pub release: Vec<String>,
}

/// The planning step of a round, pure so that it can be tested alone. `owned`: the tenants
/// this replica runs; `holdings`: every configured tenant's Lease; `live`: the other live
/// replicas; `cooling`: tenants this replica handed over lately (not taken back while another
/// replica has room).
pub fn plan(
    owned: &BTreeSet<String>,
    holdings: &BTreeMap<String, Holding>,
    live: &BTreeSet<String>,
    cooling: &BTreeSet<String>,
    max_moves: usize,
    me: &str,
) -> Plan {
    let tenants = holdings.len();
    let replicas = live.len() + 1;
    let share = tenants.div_ceil(replicas);
    let mut load: BTreeMap<&str, usize> = live.iter().map(|r| (r.as_str(), 0)).collect();
    for h in holdings.values() {
        if let Holding::Other { holder, expired: false } = h {
            if let Some(n) = load.get_mut(holder.as_str()) {
                *n += 1;
            }
        }
    }
    let others_have_room = load.values().any(|n| *n < share);
    let takeable: Vec<&String> = holdings
        .iter()
        .filter(|(t, h)| {
            !owned.contains(*t)
                && match h {
                    Holding::Free | Holding::Mine => true,
                    Holding::Other { expired, .. } => *expired,
                }
        })
        .map(|(t, _)| t)
        .collect();
    let mut plan = Plan::default();
    // Replicas start their rounds together: each walks the free Leases in an order of its own.
    let mut order: Vec<&String> = takeable.iter().copied().filter(|t| !(others_have_room && cooling.contains(*t))).collect();
    order.sort_by_key(|t| spread_key(me, t));
    let limit = if others_have_room { share } else { tenants };
    plan.acquire = order.into_iter().take(limit.saturating_sub(owned.len())).cloned().collect();
    // Rebalance only when nothing is free: a replica with room takes free Leases first.
    if takeable.is_empty() {
        if let Some(least) = load.values().min().copied() {
            let excess = owned.len().saturating_sub(least + 1);
            let mut mine: Vec<&String> = owned.iter().collect();
            mine.sort_by_key(|t| std::cmp::Reverse(spread_key(me, t)));
            plan.release = mine.into_iter().take(excess.div_ceil(2).min(max_moves)).cloned().collect();
        }
    }
    plan
}

/// A stable pseudo-random order of tenants per replica (FNV-1a of both names).
fn spread_key(me: &str, tenant: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in me.bytes().chain([0]).chain(tenant.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Each replica's Lease and each tenant's, as this replica shows them on the status page.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ShardView {
    pub identity: String,
    pub namespace: String,
    /// Live replicas, this one included.
    pub replicas: Vec<String>,
    /// The share of tenants each replica aims at.
    pub share: usize,
    pub owned: Vec<String>,
    /// Each tenant's Lease holder (empty: free), with `(expired)` when it lapsed.
    pub holders: BTreeMap<String, String>,
    pub rounds: u64,
    pub acquired: u64,
    pub lost: u64,
    pub released: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// What this replica saw of one Lease, and when it first saw it so (its own clock).
struct Seen {
    holder: String,
    renew: Option<MicroTime>,
    duration: Duration,
    since: Instant,
}

/// A tenant this replica owns.
struct Owned {
    fence: Fence,
    /// The Lease as last written (its resourceVersion guards the next renew).
    lease: Lease,
    /// When the last successful write of it was sent.
    renewed: Instant,
}

/// The running sharder of a [`TenantHost`].
pub struct Sharder {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    view: watch::Receiver<ShardView>,
}

impl Sharder {
    pub fn start(host: TenantHost, client: Client, options: ShardOptions) -> Sharder {
        let (stop, stop_rx) = watch::channel(false);
        let (view_tx, view) =
            watch::channel(ShardView { identity: options.identity.clone(), namespace: options.namespace.clone(), ..ShardView::default() });
        let round = Round {
            api: Api::namespaced(client, &options.namespace),
            host,
            options,
            seen: BTreeMap::new(),
            owned: BTreeMap::new(),
            handing_over: Arc::default(),
            cooling: BTreeMap::new(),
            membership: None,
            view: view_tx,
        };
        Sharder { stop, task: tokio::spawn(round.run(stop_rx)), view }
    }

    pub fn view(&self) -> ShardView {
        self.view.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<ShardView> {
        self.view.clone()
    }

    /// Stops renewing and hands nothing over, as a crash would: its Leases expire.
    pub fn abandon(self) {
        self.task.abort();
    }

    /// Stops every tenant this replica owns, hands their Leases over, and leaves the shard.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct Round {
    api: Api<Lease>,
    host: TenantHost,
    options: ShardOptions,
    seen: BTreeMap<String, Seen>,
    owned: BTreeMap<String, Owned>,
    /// Tenants being stopped and released in the background; not taken meanwhile.
    handing_over: Arc<Mutex<BTreeSet<String>>>,
    /// Tenants handed over by a rebalance, and when.
    cooling: BTreeMap<String, Instant>,
    /// This replica's membership Lease as last written.
    membership: Option<Lease>,
    view: watch::Sender<ShardView>,
}

/// Why a Lease write failed.
enum WriteError {
    /// Someone else wrote it first (409): re-read before trying again.
    Conflict,
    Failed(String),
}

impl Round {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            self.round().await;
            let pause = jittered(self.options.retry_period);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        self.leave().await;
    }

    fn record(&self, f: impl FnOnce(&mut ShardView)) {
        self.view.send_modify(f);
        self.host.observatory().set_shard(serde_json::to_value(&*self.view.borrow()).unwrap_or_default());
    }

    fn failed(&self, e: String) {
        tracing::warn!(namespace = %self.options.namespace, error = %e, "shard lease request failed");
        self.host.observatory().record_shard_lease("error");
        self.record(|v| {
            v.errors += 1;
            v.last_error = Some(e);
        });
    }

    async fn round(&mut self) {
        let me = self.options.identity.clone();
        let tenants: Vec<String> = self.host.config().tenants.iter().map(|t| t.name.clone()).collect();
        let listed = match self.api.list(&ListParams::default()).await {
            Ok(list) => Some(list.items),
            Err(e) => {
                self.failed(format!("listing Leases in {}: {e}", self.options.namespace));
                None
            }
        };
        let listed_ok = listed.is_some();
        let now = Instant::now();
        let mut leases: BTreeMap<String, Lease> = BTreeMap::new();
        if let Some(items) = listed {
            for lease in items {
                let Some(name) = lease.metadata.name.clone() else { continue };
                self.observe(&name, &lease, now);
                leases.insert(name, lease);
            }
            let present: BTreeSet<&String> = leases.keys().collect();
            self.seen.retain(|name, _| present.contains(name));
        }
        // A member since an earlier round: replicas started together have seen each other.
        let was_member = self.membership.is_some();
        self.renew_membership(leases.get(&replica_lease(&me)).cloned()).await;
        self.renew_owned().await;
        // Without a fresh list, or before this replica has been a member for a round, renewing
        // is all a round does.
        if !listed_ok || !was_member || self.membership.is_none() {
            return;
        }
        let live: BTreeSet<String> = self
            .seen
            .iter()
            .filter(|(name, s)| name.starts_with(REPLICA_LEASE_PREFIX) && !s.holder.is_empty() && s.holder != me && !self.expired(s, now))
            .map(|(_, s)| s.holder.clone())
            .collect();
        let handing_over = self.handing_over.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut holdings = BTreeMap::new();
        for t in &tenants {
            let holding = match self.seen.get(&tenant_lease(t)) {
                _ if handing_over.contains(t) => Holding::Other { holder: me.clone(), expired: false },
                None => Holding::Free,
                Some(s) if s.holder.is_empty() => Holding::Free,
                Some(s) if s.holder == me => Holding::Mine,
                Some(s) => Holding::Other { holder: s.holder.clone(), expired: self.expired(s, now) },
            };
            holdings.insert(t.clone(), holding);
        }
        self.cooling.retain(|_, at| at.elapsed() < self.options.lease_duration * 2);
        let cooling: BTreeSet<String> = self.cooling.keys().cloned().collect();
        let owned: BTreeSet<String> = self.owned.keys().cloned().collect();
        // Tenants no longer configured are handed over at once.
        let removed: Vec<String> = owned.iter().filter(|t| !holdings.contains_key(*t)).cloned().collect();
        let plan = plan(&owned, &holdings, &live, &cooling, self.options.max_moves, &me);
        for t in removed.iter().chain(&plan.release) {
            self.hand_over(t);
        }
        for t in &plan.acquire {
            self.acquire(t, leases.get(&tenant_lease(t)).cloned()).await;
        }
        let share = tenants.len().div_ceil(live.len() + 1);
        let mut replicas: Vec<String> = live.into_iter().collect();
        replicas.push(me.clone());
        replicas.sort();
        let holders = tenants
            .iter()
            .map(|t| {
                let shown = match holdings.get(t) {
                    _ if self.owned.contains_key(t) => me.clone(),
                    Some(Holding::Other { holder, expired }) => format!("{holder}{}", if *expired { " (expired)" } else { "" }),
                    _ => String::new(),
                };
                (t.clone(), shown)
            })
            .collect();
        let owned: Vec<String> = self.owned.keys().cloned().collect();
        self.host.observatory().set_shard_counts(owned.len(), replicas.len());
        self.record(|v| {
            v.rounds += 1;
            v.replicas = replicas;
            v.share = share;
            v.owned = owned;
            v.holders = holders;
        });
    }

    /// Notes a Lease as listed; its change time is when this replica first saw this version.
    fn observe(&mut self, name: &str, lease: &Lease, now: Instant) {
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let duration =
            spec.lease_duration_seconds.filter(|s| *s > 0).map_or(self.options.lease_duration, |s| Duration::from_secs(s as u64));
        match self.seen.get_mut(name) {
            Some(s) if s.holder == holder && s.renew == spec.renew_time => s.duration = duration,
            _ => {
                self.seen.insert(name.to_string(), Seen { holder, renew: spec.renew_time, duration, since: now });
            }
        }
    }

    fn expired(&self, seen: &Seen, now: Instant) -> bool {
        now.saturating_duration_since(seen.since) >= seen.duration
    }

    fn labelled(&self, name: &str, role: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.options.namespace.clone()),
            labels: Some([(ROLE_LABEL.to_string(), role.to_string())].into()),
            ..ObjectMeta::default()
        }
    }

    /// Writes the Lease held by this replica: created (with `meta`) when `current` is `None`,
    /// else `current` replaced, guarded by its resourceVersion; a renewal keeps its acquire time.
    async fn write(api: &Api<Lease>, options: &ShardOptions, meta: ObjectMeta, current: Option<Lease>) -> Result<Lease, WriteError> {
        let now = MicroTime(Timestamp::now());
        let result = match current {
            None => {
                let lease = Lease { metadata: meta, spec: Some(held_spec(None, &options.identity, options.lease_duration, now)) };
                api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                let name = lease.metadata.name.clone().unwrap_or_default();
                lease.spec = Some(held_spec(lease.spec.take(), &options.identity, options.lease_duration, now));
                api.replace(&name, &PostParams::default(), &lease).await
            }
        };
        result.map_err(|e| match e {
            kube::Error::Api(s) if s.code == 409 => WriteError::Conflict,
            e => WriteError::Failed(e.to_string()),
        })
    }

    async fn renew_membership(&mut self, listed: Option<Lease>) {
        let name = replica_lease(&self.options.identity);
        // The listed copy is fresher when a write of ours was lost; ours when the list failed.
        let current = listed.or_else(|| self.membership.clone());
        match Self::write(&self.api, &self.options, self.labelled(&name, "replica"), current).await {
            Ok(lease) => self.membership = Some(lease),
            Err(WriteError::Conflict) => self.membership = None,
            Err(WriteError::Failed(e)) => self.failed(format!("renewing {name}: {e}")),
        }
    }

    /// Renews every owned tenant's Lease; stops the tenants whose Lease is gone or whose fence
    /// came down.
    async fn renew_owned(&mut self) {
        let due = self.options.renew_interval();
        let renewals: Vec<(String, Lease)> =
            self.owned.iter().filter(|(_, o)| o.renewed.elapsed() >= due).map(|(t, o)| (t.clone(), o.lease.clone())).collect();
        let (api, options) = (&self.api, &self.options);
        let results: Vec<(String, Instant, Result<Lease, WriteError>)> = stream::iter(renewals)
            .map(|(tenant, lease)| async move {
                let sent = Instant::now();
                let meta = lease.metadata.clone();
                (tenant, sent, Self::write(api, options, meta, Some(lease)).await)
            })
            .buffer_unordered(WRITES_AT_ONCE)
            .collect()
            .await;
        for (tenant, sent, result) in results {
            let Some(owned) = self.owned.get_mut(&tenant) else { continue };
            match result {
                Ok(lease) => {
                    owned.fence.set(Some(sent + self.options.renew_deadline));
                    owned.lease = lease;
                    owned.renewed = sent;
                }
                Err(WriteError::Conflict) => {
                    // Written by someone else since: ours only if it still names us.
                    match self.api.get_opt(&tenant_lease(&tenant)).await {
                        Ok(Some(lease))
                            if lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(&self.options.identity) =>
                        {
                            owned.lease = lease
                        }
                        Ok(_) => {
                            owned.fence.set(None);
                            self.lost(&tenant, "another replica holds its Lease");
                        }
                        Err(e) => self.failed(format!("reading {}: {e}", tenant_lease(&tenant))),
                    }
                }
                Err(WriteError::Failed(e)) => self.failed(format!("renewing {}: {e}", tenant_lease(&tenant))),
            }
        }
        let lapsed: Vec<String> = self.owned.iter().filter(|(_, o)| !o.fence.is_leading()).map(|(t, _)| t.clone()).collect();
        for tenant in lapsed {
            self.lost(&tenant, "its Lease could not be renewed within the renew deadline");
        }
    }

    /// A tenant whose Lease is no longer ours: its fence is down already; stop its engine.
    fn lost(&mut self, tenant: &str, why: &str) {
        let Some(owned) = self.owned.remove(tenant) else { return };
        tracing::warn!(tenant, why, "lost the tenant's shard lease: stopped starting its calls");
        owned.fence.set(None);
        self.host.observatory().record_shard_lease("lost");
        self.record(|v| v.lost += 1);
        let host = self.host.clone();
        let name = tenant.to_string();
        tokio::spawn(async move { host.disown(&name).await });
    }

    async fn acquire(&mut self, tenant: &str, current: Option<Lease>) {
        let name = tenant_lease(tenant);
        let sent = Instant::now();
        match Self::write(&self.api, &self.options, self.labelled(&name, "tenant"), current).await {
            Ok(lease) => {
                let fence = Fence::until(Some(sent + self.options.renew_deadline)).with_grace(self.options.grace());
                tracing::info!(tenant, identity = %self.options.identity, "acquired the tenant's shard lease");
                self.owned.insert(tenant.to_string(), Owned { fence: fence.clone(), lease, renewed: sent });
                self.host.observatory().record_shard_lease("acquired");
                self.record(|v| v.acquired += 1);
                let (host, tenant) = (self.host.clone(), tenant.to_string());
                tokio::spawn(async move { host.claim(&tenant, fence).await });
            }
            Err(WriteError::Conflict) => {}
            Err(WriteError::Failed(e)) => self.failed(format!("acquiring {name}: {e}")),
        }
    }

    /// Stops a tenant, lets its calls finish, then releases its Lease, in the background.
    fn hand_over(&mut self, tenant: &str) {
        let Some(owned) = self.owned.remove(tenant) else { return };
        self.cooling.insert(tenant.to_string(), Instant::now());
        self.handing_over.lock().unwrap_or_else(|e| e.into_inner()).insert(tenant.to_string());
        let (host, api, handing_over) = (self.host.clone(), self.api.clone(), self.handing_over.clone());
        let tenant = tenant.to_string();
        self.host.observatory().record_shard_lease("released");
        self.record(|v| v.released += 1);
        tokio::spawn(async move {
            release(&host, &api, &tenant, owned).await;
            handing_over.lock().unwrap_or_else(|e| e.into_inner()).remove(&tenant);
        });
    }

    /// A clean shutdown: every tenant handed over, then the membership emptied.
    async fn leave(mut self) {
        let owned = std::mem::take(&mut self.owned);
        let releases = owned.into_iter().map(|(tenant, o)| {
            let (host, api) = (self.host.clone(), self.api.clone());
            async move { release(&host, &api, &tenant, o).await }
        });
        stream::iter(releases).buffer_unordered(WRITES_AT_ONCE).collect::<Vec<()>>().await;
        if let Some(lease) = self.membership.take() {
            empty(&self.api, lease).await;
        }
        tracing::info!(identity = %self.options.identity, "left the shard");
    }
}

/// Stops the tenant (its engine, then its calls in flight: the controller waits for them up to
/// the fence's cutoff) and empties its Lease.
async fn release(host: &TenantHost, api: &Api<Lease>, tenant: &str, owned: Owned) {
    host.disown(tenant).await;
    if owned.fence.in_flight() > 0 && !owned.fence.drained(Duration::from_secs(1)).await {
        tracing::warn!(tenant, calls = owned.fence.in_flight(), "calls still in flight when the tenant's Lease goes");
    }
    owned.fence.set(None);
    empty(api, owned.lease).await;
}

/// Clears a Lease's holder (a 1-second duration), so that others may take it at once.
async fn empty(api: &Api<Lease>, mut lease: Lease) {
    let name = lease.metadata.name.clone().unwrap_or_default();
    release_spec(lease.spec.get_or_insert_with(LeaseSpec::default));
    match api.replace(&name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(lease = %name, "released"),
        Err(e) => tracing::warn!(lease = %name, error = %e, "could not release (it expires instead)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn holdings(entries: &[(&str, Holding)]) -> BTreeMap<String, Holding> {
        entries.iter().map(|(t, h)| (t.to_string(), h.clone())).collect()
    }

    fn other(holder: &str) -> Holding {
        Holding::Other { holder: holder.into(), expired: false }
    }

    #[test]
    fn a_lone_replica_takes_every_free_tenant() {
        let h = holdings(&[("a", Holding::Free), ("b", Holding::Free), ("c", Holding::Free)]);
        let p = plan(&set(&[]), &h, &set(&[]), &set(&[]), 1, "r1");
        assert_eq!(p.acquire.iter().cloned().collect::<BTreeSet<_>>(), set(&["a", "b", "c"]));
        assert!(p.release.is_empty());
    }

    #[test]
    fn with_others_live_a_replica_takes_only_its_share() {
        let h: BTreeMap<String, Holding> = (0..9).map(|i| (format!("t{i}"), Holding::Free)).collect();
        let p = plan(&set(&[]), &h, &set(&["r2", "r3"]), &set(&[]), 1, "r1");
        assert_eq!(p.acquire.len(), 3, "ceil(9 / 3)");
        // Another replica starts from other tenants.
        let q = plan(&set(&[]), &h, &set(&["r1", "r3"]), &set(&[]), 1, "r2");
        assert_ne!(p.acquire, q.acquire);
    }

    #[test]
    fn an_expired_lease_is_taken_and_a_live_one_is_not() {
        let h = holdings(&[("a", Holding::Other { holder: "r2".into(), expired: true }), ("b", other("r2"))]);
        let p = plan(&set(&[]), &h, &set(&[]), &set(&[]), 1, "r1");
        assert_eq!(p.acquire, ["a"]);
    }

    #[test]
    fn a_loaded_replica_hands_over_at_most_max_moves_per_round_once_nothing_is_free() {
        // r1 owns all six; r2 and r3 joined with none.
        let names = ["a", "b", "c", "d", "e", "f"];
        let h: BTreeMap<String, Holding> = names.iter().map(|t| (t.to_string(), Holding::Mine)).collect();
        let p = plan(&set(&names), &h, &set(&["r2", "r3"]), &set(&[]), 1, "r1");
        assert!(p.acquire.is_empty());
        assert_eq!(p.release.len(), 1);
        let p = plan(&set(&names), &h, &set(&["r2", "r3"]), &set(&[]), 4, "r1");
        assert_eq!(p.release.len(), 3, "half the gap to the least loaded: (6 - 1) / 2 rounded up");
        // Balanced within one: nothing moves.
        let h = holdings(&[("a", Holding::Mine), ("b", Holding::Mine), ("c", other("r2")), ("d", other("r3")), ("e", other("r3"))]);
        let p = plan(&set(&["a", "b"]), &h, &set(&["r2", "r3"]), &set(&[]), 1, "r1");
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn a_replica_does_not_take_back_what_it_just_handed_over_while_another_has_room() {
        let h = holdings(&[("a", Holding::Free), ("b", other("r2"))]);
        let p = plan(&set(&[]), &h, &set(&["r2", "r3"]), &set(&["a"]), 1, "r1");
        assert!(p.acquire.is_empty(), "r3 has room: {p:?}");
        // Nobody else has room: it takes it back rather than leave it unowned.
        let h = holdings(&[("a", Holding::Free), ("b", other("r2"))]);
        let p = plan(&set(&[]), &h, &set(&["r2"]), &set(&["a"]), 1, "r1");
        assert_eq!(p.acquire, ["a"]);
    }

    #[test]
    fn replica_lease_names_are_valid_object_names() {
        assert_eq!(replica_lease("Host_42"), "difftracker-replica-host-42");
        assert_eq!(tenant_lease("alpha"), "difftracker-tenant-alpha");
    }

    #[test]
    fn timing_is_checked() {
        assert!(ShardOptions::new("ns", "r1").validate().is_ok());
        let bad = ShardOptions { renew_deadline: Duration::from_secs(20), ..ShardOptions::new("ns", "r1") };
        assert!(bad.validate().unwrap_err().contains("renew deadline"));
        let bad = ShardOptions { max_moves: 0, ..ShardOptions::new("ns", "r1") };
        assert!(bad.validate().is_err());
    }
}
