//! Fair shares of the worker's descriptors and memory between local users, so that one user
//! cannot lock everyone else out: a cap on the connections one user holds open, a cap on
//! their connections whose request is unfinished (a body still arriving), and a budget for the
//! request bodies being buffered, both in all and per user. Users are told apart by the peer
//! uid the worker already resolves (`peer_identity`); callers it could not identify share one
//! "unknown" bucket.
//!
//! Everything is counted in one [`FairShare`] shared by every shard, under one short lock;
//! what is taken is given back by dropping the slot or reservation that holds it. Refusals
//! are logged at most once a second per kind, with the count of refusals since the last
//! line, so a flood of them cannot flood the journal. When the buffered bodies fall back to
//! nothing after a burst, the memory the allocator kept is handed back to the system
//! (glibc's `malloc_trim`).
//!
//! Uses `crate::worker::metrics` (refusals are counted there), std, tracing and libc; knows
//! nothing of HTTP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The limits, after defaults are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FairShareLimits {
    /// Connections one user may hold open.
    pub connections_per_user: usize,
    /// Connections of one user whose request body is still arriving.
    pub unfinished_requests_per_user: usize,
    /// Bytes of request bodies buffered for all users together.
    pub buffered_bodies: usize,
    /// Bytes of request bodies buffered for one user.
    pub buffered_bodies_per_user: usize,
}

/// Default budget for all buffered request bodies: 256 MiB.
pub(crate) const DEFAULT_BUFFERED_BODIES: usize = 256 * 1024 * 1024;
/// Default budget for one user's buffered request bodies: 64 MiB (two bodies of the default
/// 32 MiB limit).
pub(crate) const DEFAULT_BUFFERED_BODIES_PER_USER: usize = 64 * 1024 * 1024;

/// Descriptors kept out of every share (listeners, pipes, logging, the usage store, upstream
/// connections of the first requests).
const RESERVED_FILES: u64 = 64;
/// At most this many connections per user, however high the open-files limit.
const MAX_DEFAULT_CONNECTIONS_PER_USER: u64 = 4096;
/// At least this many, however low the limit.
const MIN_DEFAULT_CONNECTIONS_PER_USER: u64 = 8;

impl FairShareLimits {
    /// The defaults for a worker that may open `open_files` descriptors: one user may hold an
    /// eighth of what is left after [`RESERVED_FILES`] (each of their connections may need an
    /// upstream connection too, so a quarter of the descriptors at most), between 8 and
    /// 4,096 connections, a quarter of them with an unfinished request.
    pub(crate) fn with_defaults(
        open_files: u64,
        connections_per_user: Option<usize>,
        unfinished_requests_per_user: Option<usize>,
        buffered_bodies: Option<usize>,
        buffered_bodies_per_user: Option<usize>,
    ) -> Self {
        let connections = connections_per_user.unwrap_or_else(|| {
            (open_files.saturating_sub(RESERVED_FILES) / 8).clamp(
                MIN_DEFAULT_CONNECTIONS_PER_USER,
                MAX_DEFAULT_CONNECTIONS_PER_USER,
            ) as usize
        });
        FairShareLimits {
            connections_per_user: connections,
            unfinished_requests_per_user: unfinished_requests_per_user
                .unwrap_or((connections / 4).max(1)),
            buffered_bodies: buffered_bodies.unwrap_or(DEFAULT_BUFFERED_BODIES),
            buffered_bodies_per_user: buffered_bodies_per_user
                .unwrap_or(DEFAULT_BUFFERED_BODIES_PER_USER),
        }
    }
}

/// The soft limit on open files of this process (after the supervisor raised it).
pub(crate) fn open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit with a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    }
}

/// Why something was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The user holds as many connections as they may.
    Connections,
    /// The user has as many unfinished requests as they may.
    UnfinishedRequests,
    /// This body does not fit the user's share of body memory.
    UserBodies,
    /// This body does not fit the memory left for all bodies.
    AllBodies,
}

impl Refusal {
    fn index(self) -> usize {
        self as usize
    }

    /// The limit's name in the metrics (`limit` label), as the setting is named.
    pub(crate) fn metric_label(self) -> &'static str {
        match self {
            Refusal::Connections => "connections_per_user",
            Refusal::UnfinishedRequests => "unfinished_requests_per_user",
            Refusal::UserBodies => "buffered_bodies_per_user",
            Refusal::AllBodies => "buffered_bodies",
        }
    }

    /// What the log line says.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::Connections => "too many open connections of this user",
            Refusal::UnfinishedRequests => "too many unfinished requests of this user",
            Refusal::UserBodies => "this user's request bodies fill their share of memory",
            Refusal::AllBodies => "request bodies fill the memory set aside for them",
        }
    }
}

/// The key of a user's counts: their uid, or `None` for every unidentified caller.
pub(crate) type UserKey = Option<u32>;

#[derive(Default)]
struct UserUse {
    connections: usize,
    unfinished: usize,
    buffered: usize,
}

impl UserUse {
    fn is_idle(&self) -> bool {
        self.connections == 0 && self.unfinished == 0 && self.buffered == 0
    }
}

#[derive(Default)]
struct Counts {
    users: HashMap<UserKey, UserUse>,
    buffered: usize,
    /// The most buffered since memory was last handed back.
    buffered_peak: usize,
}

/// A burst of buffered bodies at least this large is followed by handing memory back.
const TRIM_AFTER: usize = 8 * 1024 * 1024;

/// At most one log line per kind of refusal this often.
const LOG_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct RefusalLog {
    last_line: Option<Instant>,
    unlogged: u64,
}

/// The counts and limits shared by every shard.
pub(crate) struct FairShare {
    limits: FairShareLimits,
    counts: Mutex<Counts>,
    logs: [Mutex<RefusalLog>; 4],
}

impl FairShare {
    pub(crate) fn new(limits: FairShareLimits) -> Arc<Self> {
        Arc::new(FairShare {
            limits,
            counts: Mutex::default(),
            logs: Default::default(),
        })
    }

    pub(crate) fn limits(&self) -> FairShareLimits {
        self.limits
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection of `user`, counted until the slot is dropped.
    pub(crate) fn open_connection(
        self: &Arc<Self>,
        user: UserKey,
    ) -> Result<ConnectionSlot, Refusal> {
        let mut counts = self.counts();
        let entry = counts.users.entry(user).or_default();
        if entry.connections >= self.limits.connections_per_user {
            drop(counts);
            self.log_refusal(Refusal::Connections, user);
            return Err(Refusal::Connections);
        }
        entry.connections += 1;
        Ok(ConnectionSlot {
            share: self.clone(),
            user,
        })
    }

    /// An unfinished request of `user`, counted until the slot is dropped.
    pub(crate) fn start_unfinished(
        self: &Arc<Self>,
        user: UserKey,
    ) -> Result<UnfinishedSlot, Refusal> {
        let mut counts = self.counts();
        let entry = counts.users.entry(user).or_default();
        if entry.unfinished >= self.limits.unfinished_requests_per_user {
            let idle = entry.is_idle();
            if idle {
                counts.users.remove(&user);
            }
            drop(counts);
            self.log_refusal(Refusal::UnfinishedRequests, user);
            return Err(Refusal::UnfinishedRequests);
        }
        entry.unfinished += 1;
        Ok(UnfinishedSlot {
            share: self.clone(),
            user,
        })
    }

    /// Memory for `bytes` of `user`'s request body, held until the reservation is dropped.
    pub(crate) fn reserve(
        self: &Arc<Self>,
        user: UserKey,
        bytes: usize,
    ) -> Result<BodyReservation, Refusal> {
        let mut reservation = BodyReservation {
            share: self.clone(),
            user,
            bytes: 0,
        };
        reservation.grow_to(bytes)?;
        Ok(reservation)
    }

    fn try_add_bytes(&self, user: UserKey, more: usize) -> Result<(), Refusal> {
        let mut counts = self.counts();
        let total = counts.buffered.saturating_add(more);
        let entry = counts.users.entry(user).or_default();
        let refusal = if total > self.limits.buffered_bodies {
            Some(Refusal::AllBodies)
        } else if entry.buffered.saturating_add(more) > self.limits.buffered_bodies_per_user {
            Some(Refusal::UserBodies)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            if entry.is_idle() {
                counts.users.remove(&user);
            }
            drop(counts);
            self.log_refusal(refusal, user);
            return Err(refusal);
        }
        entry.buffered += more;
        counts.buffered = total;
        counts.buffered_peak = counts.buffered_peak.max(total);
        Ok(())
    }

    fn release(&self, user: UserKey, connections: usize, unfinished: usize, bytes: usize) {
        let trim = {
            let mut counts = self.counts();
            if let Some(entry) = counts.users.get_mut(&user) {
                entry.connections = entry.connections.saturating_sub(connections);
                entry.unfinished = entry.unfinished.saturating_sub(unfinished);
                entry.buffered = entry.buffered.saturating_sub(bytes);
                if entry.is_idle() {
                    counts.users.remove(&user);
                }
            }
            counts.buffered = counts.buffered.saturating_sub(bytes);
            let trim = bytes > 0 && counts.buffered == 0 && counts.buffered_peak >= TRIM_AFTER;
            if trim {
                counts.buffered_peak = 0;
            }
            trim
        };
        if trim {
            hand_memory_back();
        }
    }

    /// One line per kind of refusal per second at most, counting those not logged.
    fn log_refusal(&self, refusal: Refusal, user: UserKey) {
        crate::worker::metrics::limit_refused(refusal.metric_label());
        let mut log = self.logs[refusal.index()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if log
            .last_line
            .is_some_and(|last| now.duration_since(last) < LOG_EVERY)
        {
            log.unlogged += 1;
            return;
        }
        let unlogged = std::mem::take(&mut log.unlogged);
        log.last_line = Some(now);
        drop(log);
        let limits = self.limits;
        let client_uid = user.map_or_else(|| "unknown".to_owned(), |uid| uid.to_string());
        tracing::warn!(
            client_uid = %client_uid,
            refused_since_last_line = unlogged,
            connections_per_user = limits.connections_per_user,
            unfinished_requests_per_user = limits.unfinished_requests_per_user,
            buffered_bodies = limits.buffered_bodies,
            buffered_bodies_per_user = limits.buffered_bodies_per_user,
            "refused: {} (uid {client_uid}; {unlogged} more refusal(s) of this kind since the last such line)",
            refusal.reason()
        );
    }

    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.counts().buffered
    }

    #[cfg(test)]
    fn users_counted(&self) -> usize {
        self.counts().users.len()
    }
}

/// glibc keeps freed memory for reuse; after a burst of large bodies, give it back.
fn hand_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One open connection of a user.
pub(crate) struct ConnectionSlot {
    share: Arc<FairShare>,
    user: UserKey,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.share.release(self.user, 1, 0, 0);
    }
}

/// One unfinished request of a user.
pub(crate) struct UnfinishedSlot {
    share: Arc<FairShare>,
    user: UserKey,
}

impl Drop for UnfinishedSlot {
    fn drop(&mut self) {
        self.share.release(self.user, 0, 1, 0);
    }
}

/// Memory held for one request body.
pub(crate) struct BodyReservation {
    share: Arc<FairShare>,
    user: UserKey,
    bytes: usize,
}

impl BodyReservation {
    /// Holds at least `bytes` in all, or refuses (keeping what was held).
    pub(crate) fn grow_to(&mut self, bytes: usize) -> Result<(), Refusal> {
        if bytes > self.bytes {
            self.share.try_add_bytes(self.user, bytes - self.bytes)?;
            self.bytes = bytes;
        }
        Ok(())
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for BodyReservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.share.release(self.user, 0, 0, self.bytes);
        }
    }
}

/// A request body that keeps its memory reserved for as long as it lives.
pub(crate) struct ReservedBody {
    pub bytes: bytes::Bytes,
    /// Never read: held so that the memory stays reserved while the bytes live.
    pub _reservation: BodyReservation,
}

impl AsRef<[u8]> for ReservedBody {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> FairShareLimits {
        FairShareLimits {
            connections_per_user: 2,
            unfinished_requests_per_user: 1,
            buffered_bodies: 100,
            buffered_bodies_per_user: 60,
        }
    }

    #[test]
    fn defaults_follow_the_open_files_limit() {
        let d = |n| FairShareLimits::with_defaults(n, None, None, None, None);
        assert_eq!(d(256).connections_per_user, 24);
        assert_eq!(d(256).unfinished_requests_per_user, 6);
        assert_eq!(d(20_000).connections_per_user, 2492);
        assert_eq!(d(524_288).connections_per_user, 4096);
        assert_eq!(d(524_288).unfinished_requests_per_user, 1024);
        assert_eq!(d(16).connections_per_user, 8);
        assert_eq!(d(16).buffered_bodies, 256 << 20);
        assert_eq!(d(16).buffered_bodies_per_user, 64 << 20);
        let set = FairShareLimits::with_defaults(256, Some(3), Some(2), Some(10), Some(5));
        assert_eq!(
            set,
            FairShareLimits {
                connections_per_user: 3,
                unfinished_requests_per_user: 2,
                buffered_bodies: 10,
                buffered_bodies_per_user: 5
            }
        );
    }

    #[test]
    fn connections_are_capped_per_user_and_given_back() {
        let share = FairShare::new(limits());
        let a1 = share.open_connection(Some(1)).unwrap();
        let _a2 = share.open_connection(Some(1)).unwrap();
        assert_eq!(
            share.open_connection(Some(1)).err(),
            Some(Refusal::Connections)
        );
        // Others, and the unknown bucket, have their own caps.
        let _b = share.open_connection(Some(2)).unwrap();
        let _u1 = share.open_connection(None).unwrap();
        let _u2 = share.open_connection(None).unwrap();
        assert_eq!(
            share.open_connection(None).err(),
            Some(Refusal::Connections)
        );
        drop(a1);
        let _a3 = share.open_connection(Some(1)).unwrap();
        let u = share.start_unfinished(Some(1)).unwrap();
        assert_eq!(
            share.start_unfinished(Some(1)).err(),
            Some(Refusal::UnfinishedRequests)
        );
        drop(u);
        let _u = share.start_unfinished(Some(1)).unwrap();
    }

    #[test]
    fn body_memory_is_budgeted_in_all_and_per_user() {
        let share = FairShare::new(limits());
        let mut a = share.reserve(Some(1), 50).unwrap();
        assert_eq!(a.grow_to(70).err(), Some(Refusal::UserBodies));
        assert_eq!(a.bytes(), 50);
        let b = share.reserve(Some(2), 50).unwrap();
        assert_eq!(share.reserve(Some(3), 1).err(), Some(Refusal::AllBodies));
        assert_eq!(share.buffered(), 100);
        drop(b);
        a.grow_to(60).unwrap();
        assert_eq!(share.buffered(), 60);
        drop(a);
        assert_eq!(share.buffered(), 0);
        assert_eq!(share.users_counted(), 0, "idle users are forgotten");
    }

    #[test]
    fn refusals_are_logged_at_most_once_a_second_per_kind() {
        let share = FairShare::new(limits());
        let log = crate::logging::capture::traced(|| {
            for _ in 0..1000 {
                let _ = share.reserve(Some(7), 1000);
            }
        });
        assert_eq!(log.matches("refused:").count(), 1, "{log}");
    }
}
