//! The config server: the leader keeps the config it compiled for each waypoint
//! Gateway in memory and answers the Gateway's dataplanes' long polls
//! (`waypoint_config::delivery`). Every poll reports the version that replica
//! runs, so status can say whether a replica has applied the current config.
//!
//! [`Store`] holds the state and decides ([`Store::answer`], [`Store::applied`]);
//! [`http`] does the I/O. The compiled config is also written to the waypoint's
//! ConfigMap, which a pod loads at start: when the operator is down, pods start
//! and keep serving the last config.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use waypoint_config::delivery::{POLL_WAIT_SECONDS, Poll};

pub mod http;

/// `(namespace, gateway)`.
pub type Key = (String, String);

/// A replica that has not polled for this long is gone: a poll is answered within
/// the poll wait, and the dataplane polls again at once.
pub const REPLICA_TTL: Duration = Duration::from_secs(POLL_WAIT_SECONDS + 15);
/// After a leader change, how long to wait for replicas to report before saying
/// none has the current config.
pub const REPORT_GRACE: Duration = Duration::from_mins(1);

#[derive(Clone, Debug)]
pub struct Entry {
    pub version: String,
    pub yaml: Arc<str>,
    pub published: Instant,
    pub replicas: BTreeMap<String, Replica>,
    /// What status last saw ([`Store::applied`]): a report that does not change it
    /// wakes no reconcile.
    pub observed: Option<Applied>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    pub version: Option<String>,
    pub rejected: Option<String>,
    pub seen: Instant,
    /// When it reported its current version first.
    pub since: Instant,
}

/// What a poll gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Send {
        version: String,
        yaml: Arc<str>,
    },
    /// Nothing new for it: hold the poll until something changes.
    Wait,
}

/// Whether the Gateway's current config runs somewhere; status turns it into the
/// Programmed condition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Applied {
    /// No replica has reported to this leader yet, and it only just started.
    #[default]
    Unknown,
    Yes,
    /// Replicas report, none has the current version.
    Pending(String),
    /// A replica refused the current version.
    Rejected(String),
}

#[derive(Debug)]
pub struct Store {
    entries: Mutex<BTreeMap<Key, Entry>>,
    changed: tokio::sync::watch::Sender<u64>,
    /// When this replica became the leader: replicas get [`REPORT_GRACE`] from then.
    started: Mutex<Instant>,
    /// Gateways whose replicas' reports changed: their status may change.
    wake: futures::channel::mpsc::UnboundedSender<Key>,
}

impl Store {
    /// The store, and the stream of Gateways to reconcile because a replica's
    /// report changed.
    pub fn new() -> (Self, futures::channel::mpsc::UnboundedReceiver<Key>) {
        let (wake, woken) = futures::channel::mpsc::unbounded();
        (
            Self {
                entries: Mutex::default(),
                changed: tokio::sync::watch::Sender::new(0),
                started: Mutex::new(Instant::now()),
                wake,
            },
            woken,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Starts the grace in which replicas that have not reported yet are not
    /// counted as missing: call it on becoming the leader.
    pub fn start_leading(&self) {
        *self.started.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Makes `yaml` the Gateway's config; returns its version and whether it is new.
    pub fn publish(&self, key: &Key, yaml: String) -> (String, bool) {
        let version = waypoint_config::delivery::version(&yaml);
        let mut entries = self.lock();
        let fresh = match entries.get_mut(key) {
            Some(e) if e.version == version => false,
            Some(e) => {
                e.version.clone_from(&version);
                e.yaml = yaml.into();
                e.published = Instant::now();
                true
            }
            None => {
                entries.insert(
                    key.clone(),
                    Entry {
                        version: version.clone(),
                        yaml: yaml.into(),
                        published: Instant::now(),
                        replicas: BTreeMap::new(),
                        observed: None,
                    },
                );
                true
            }
        };
        drop(entries);
        if fresh {
            self.bump();
            // One line per waypoint per change, as istiod logs its pushes: when a
            // replica's "config applied" came late, this says which side was slow.
            tracing::info!(namespace = %key.0, gateway = %key.1, %version, "config published");
        }
        (version, fresh)
    }

    /// Forgets Gateways for which `keep` says no (deleted, or no longer ours).
    pub fn retain(&self, mut keep: impl FnMut(&Key) -> bool) {
        self.lock().retain(|k, _| keep(k));
    }

    /// Records what a replica says it runs. A report that changes what status would
    /// say wakes the Gateway's reconcile; the rest wake only the waiting polls.
    pub fn report(&self, key: &Key, poll: &Poll, now: Instant) {
        let in_grace = self.in_grace(now);
        let Some(pod) = poll.pod.clone() else {
            return;
        };
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(key) else {
            return;
        };
        let changed = if let Some(r) = entry.replicas.get_mut(&pod) {
            let changed = r.version != poll.have || r.rejected != poll.rejected;
            if r.version != poll.have {
                r.since = now;
            }
            r.version.clone_from(&poll.have);
            r.rejected.clone_from(&poll.rejected);
            r.seen = now;
            changed
        } else {
            entry.replicas.insert(
                pod,
                Replica {
                    version: poll.have.clone(),
                    rejected: poll.rejected.clone(),
                    seen: now,
                    since: now,
                },
            );
            true
        };
        entry
            .replicas
            .retain(|_, r| now.saturating_duration_since(r.seen) < REPLICA_TTL);
        let status_changes = entry.observed.as_ref() != Some(&decide_applied(entry, now, in_grace));
        drop(entries);
        if changed {
            self.bump();
        }
        if changed && status_changes {
            let _ = self.wake.unbounded_send(key.clone());
        }
    }

    /// A poll's answer: the config when the replica has neither it nor refused it.
    pub fn answer(&self, key: &Key, poll: &Poll) -> Answer {
        let entries = self.lock();
        match entries.get(key) {
            Some(e)
                if poll.have.as_deref() != Some(e.version.as_str())
                    && poll.rejected.as_deref() != Some(e.version.as_str()) =>
            {
                Answer::Send {
                    version: e.version.clone(),
                    yaml: Arc::clone(&e.yaml),
                }
            }
            _ => Answer::Wait,
        }
    }

    fn in_grace(&self, now: Instant) -> bool {
        let started = *self.started.lock().unwrap_or_else(PoisonError::into_inner);
        now.saturating_duration_since(started) < REPORT_GRACE
    }

    /// Whether a live replica runs the Gateway's current config; remembered as what
    /// status saw.
    pub fn applied(&self, key: &Key, now: Instant) -> Applied {
        let in_grace = self.in_grace(now);
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(key) else {
            return Applied::Unknown;
        };
        let applied = decide_applied(entry, now, in_grace);
        entry.observed = Some(applied.clone());
        applied
    }

    /// Waits until a live replica has applied `version`, at most `limit`; only when
    /// some replica is live to apply it. Lets a reconcile that just published a
    /// config write status once, not Pending and then Programmed again. False when
    /// no replica was live or none answered in time.
    pub async fn wait_applied(&self, key: &Key, version: &str, limit: Duration) -> bool {
        let live = |s: &Self| {
            s.lock().get(key).is_some_and(|e| {
                e.replicas
                    .values()
                    .any(|r| Instant::now().saturating_duration_since(r.seen) < REPLICA_TTL)
            })
        };
        if !live(self) {
            return false;
        }
        let mut rx = self.subscribe();
        let done = |s: &Self| {
            s.lock().get(key).is_none_or(|e| {
                e.version != version
                    || e.replicas.values().any(|r| {
                        r.version.as_deref() == Some(version)
                            || r.rejected.as_deref() == Some(version)
                    })
            })
        };
        tokio::time::timeout(limit, async {
            while !done(self) {
                if rx.changed().await.is_err() {
                    return false;
                }
            }
            true
        })
        .await
        .unwrap_or(false)
    }

    /// A copy of every entry, for the debug endpoint and metrics.
    pub fn snapshot(&self) -> BTreeMap<Key, Entry> {
        self.lock().clone()
    }
}

/// Replicas seen within [`REPLICA_TTL`] count. One with the current version makes
/// it applied; otherwise a refusal of it is reported; with no live replica during
/// the grace after a leader change nothing is known yet.
pub fn decide_applied(entry: &Entry, now: Instant, in_grace: bool) -> Applied {
    let live: Vec<(&String, &Replica)> = entry
        .replicas
        .iter()
        .filter(|(_, r)| now.saturating_duration_since(r.seen) < REPLICA_TTL)
        .collect();
    if live
        .iter()
        .any(|(_, r)| r.version.as_deref() == Some(entry.version.as_str()))
    {
        return Applied::Yes;
    }
    if let Some((pod, _)) = live
        .iter()
        .find(|(_, r)| r.rejected.as_deref() == Some(entry.version.as_str()))
    {
        return Applied::Rejected(format!(
            "waypoint pod {pod} refused config version {}; its log says why",
            entry.version
        ));
    }
    if live.is_empty() && in_grace {
        return Applied::Unknown;
    }
    Applied::Pending(format!(
        "Waiting for a waypoint pod to apply config version {} ({} pod(s) report to the config server)",
        entry.version,
        live.len()
    ))
}

#[cfg(test)]
mod tests;
