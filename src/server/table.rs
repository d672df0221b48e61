//! Who holds a connection slot: counts per client address and per network,
//! the stress level, and the choice of a session to evict when a newcomer
//! finds the table full. Sans-IO: the time comes in as milliseconds since
//! the harness started, so the rules are tested in tables below.
//!
//! Eviction follows the idea of Postfix's postscreen and anvil: a slot is
//! for a client that keeps up with the conversation. Each session tells the
//! table when its client's turn began (a reply went out) and, inside a
//! message, how many octets came since; the table measures how far the
//! client is *behind*: the time waiting for a command line, or for a
//! message the time beyond what its octets earned at the minimum data rate.
//! Bytes of an unfinished command line earn nothing, so a slowloris that
//! sends one byte now and then falls behind like a silent one, and a
//! message trickled below the minimum rate falls behind too; a message at
//! rate never does. A client that just connected is behind by the time
//! since its greeting, like any other: being new neither protects a
//! trickler nor makes a normal client the victim.
//!
//! And like anvil, the table remembers for [`STRUCK_FOR`] the networks
//! whose sessions were evicted or cut at their deadline: a newcomer from such a network still takes a free slot but
//! evicts nobody. Without this, a crowd reconnecting as fast as it is cut
//! evicts its own members the moment they fall behind, and a normal client
//! arriving in between finds nobody far enough behind to replace.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::task::AtomicWaker;

/// The connection limits of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most connections at once.
    pub max_connections: usize,
    /// Most connections at once from one client address.
    pub per_client: usize,
    /// Most connections at once from one network (an IPv4 /24, an IPv6 /64).
    pub per_network: usize,
    /// A session whose client is this far behind (see the module docs) may
    /// be evicted for a newcomer when the table is full. A normal client
    /// answers within a round trip; this is several.
    pub evict_idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1000,
            per_client: 50,
            per_network: 100,
            evict_idle: Duration::from_secs(1),
        }
    }
}

/// How long a network whose session was evicted, or cut at its client
/// deadline, may not evict others (Postfix's anvil
/// counts per minute; a slowloris crowd is cut well within that).
pub const STRUCK_FOR: Duration = Duration::from_secs(30);

/// Stress starts when this share of the slots is used (Postfix's
/// anvil-free variant: `${stress}` is set when a service runs out of
/// processes) and ends below [`STRESS_OFF_PERCENT`], so it does not flap.
pub const STRESS_ON_PERCENT: usize = 80;
pub const STRESS_OFF_PERCENT: usize = 70;

/// A client network: an IPv4 /24 or an IPv6 /64 (what one site usually
/// holds; a botnet's addresses spread over many).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Network {
    V4([u8; 3]),
    V6([u8; 8]),
}

impl Network {
    pub fn of(ip: IpAddr) -> Network {
        match canonical_ip(ip) {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                Network::V4([o[0], o[1], o[2]])
            }
            IpAddr::V6(v6) => {
                let o = v6.octets();
                let mut n = [0u8; 8];
                n.copy_from_slice(&o[..8]);
                Network::V6(n)
            }
        }
    }
}

/// An IPv4 client on a dual-stack socket counts as its IPv4 address.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What a session is doing, as far as eviction cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Activity {
    /// Waiting for the client's next command (or for the rest of it).
    Client = 0,
    /// Waiting for someone else (the backend, a remote MX, the disk): the
    /// client is not to blame and the session is never evicted.
    Busy = 1,
    /// Receiving a message: behind only when slower than the minimum rate.
    Message = 2,
}

/// One admitted connection, shared between its session and the table.
#[derive(Debug)]
pub struct Entry {
    pub(crate) ip: Option<IpAddr>,
    /// When the client's turn began (the last reply went out, or the
    /// connection was admitted), in ms since the harness started.
    turn_ms: AtomicU64,
    /// Message octets received since then.
    octets: AtomicU64,
    /// Replies sent (the greeting is the first): 0 or 1 means the client
    /// never had a command answered.
    replies: AtomicU32,
    activity: AtomicU8,
    /// An eviction order the session has not taken yet: how far its client
    /// was behind, in ns ([`NO_EVICTION`] when none).
    evict_ns: AtomicU64,
    /// The session's task, woken when an order comes (its eviction, a
    /// change of the server's stage or stress). One waker per session in
    /// place of a channel and a stream of orders each: an idle session's
    /// harness state is this entry (bench/README.md, issue 13).
    waker: AtomicWaker,
}

/// [`Entry::evict_ns`] without an order.
const NO_EVICTION: u64 = u64::MAX;

impl Entry {
    fn new(ip: Option<IpAddr>, now_ms: u64) -> Entry {
        Entry {
            ip,
            turn_ms: AtomicU64::new(now_ms),
            octets: AtomicU64::new(0),
            replies: AtomicU32::new(0),
            activity: AtomicU8::new(Activity::Client as u8),
            evict_ns: AtomicU64::new(NO_EVICTION),
            waker: AtomicWaker::new(),
        }
    }

    /// Orders the session to leave for a newcomer: its client is `idle`
    /// behind. Taken once by [`Entry::take_eviction`].
    pub fn order_eviction(&self, idle: Duration) {
        let ns = u64::try_from(idle.as_nanos()).unwrap_or(NO_EVICTION - 1);
        self.evict_ns
            .store(ns.min(NO_EVICTION - 1), Ordering::SeqCst);
        self.waker.wake();
    }

    /// The eviction order, if one came since the last look.
    pub fn take_eviction(&self) -> Option<Duration> {
        match self.evict_ns.swap(NO_EVICTION, Ordering::SeqCst) {
            NO_EVICTION => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// The session's task is to be woken by [`Entry::wake`] (registered
    /// before it looks for orders, so none given after the look is missed).
    pub fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    /// Wakes the session's task to look for orders.
    pub fn wake(&self) {
        self.waker.wake();
    }

    /// A reply went out: the client's turn starts at `now_ms`.
    pub fn answered(&self, now_ms: u64) {
        self.turn_ms.store(now_ms, Ordering::Relaxed);
        self.octets.store(0, Ordering::Relaxed);
        self.replies.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` octets came from the client; only a message's count (see
    /// [`Activity::Message`]): a command line earns nothing until answered.
    pub fn received(&self, n: usize) {
        self.octets
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn set_activity(&self, a: Activity) {
        self.activity.store(a as u8, Ordering::Relaxed);
    }

    /// How far the client is behind at `now_ms`, or None when it is not to
    /// blame (its session waits for someone else).
    fn behind_ms(&self, now_ms: u64, min_data_rate: u64) -> Option<u64> {
        let waited = now_ms.saturating_sub(self.turn_ms.load(Ordering::Relaxed));
        match self.activity.load(Ordering::Relaxed) {
            a if a == Activity::Busy as u8 => None,
            a if a == Activity::Message as u8 => {
                let octets = self.octets.load(Ordering::Relaxed);
                let earned = octets.saturating_mul(1000) / min_data_rate.max(1);
                Some(waited.saturating_sub(earned))
            }
            _ => Some(waited),
        }
    }

    /// Whether a command was ever answered after the greeting.
    fn got_anywhere(&self) -> bool {
        self.replies.load(Ordering::Relaxed) > 1
    }
}

/// Why a newcomer is turned away; the text goes into its `421 4.7.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Full,
    Client,
    Network,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Full => "too many connections",
            Refused::Client => "too many connections from your address",
            Refused::Network => "too many connections from your network",
        }
    }
}

/// The outcome of [`Table::admit`].
#[derive(Debug)]
pub enum Admission {
    /// Admitted; when the table was full, `evict` is the session that must
    /// leave for it (already counted as leaving) and how far behind it was.
    Admitted {
        id: u64,
        entry: Arc<Entry>,
        evict: Option<(u64, Duration)>,
    },
    Refused(Refused),
}

struct Slot {
    entry: Arc<Entry>,
    leaving: bool,
}

/// The connection table of one listener.
pub struct Table {
    limits: Limits,
    /// Octets per second a message earns its time at: the client
    /// deadline's own ([`super::Timeouts::min_data_rate`]), so that a
    /// session is behind for eviction exactly when it is behind its deadline.
    min_data_rate: u64,
    next_id: u64,
    slots: HashMap<u64, Slot>,
    per_ip: HashMap<IpAddr, usize>,
    per_network: HashMap<Network, usize>,
    /// Evicted sessions still writing their `421`.
    leaving: usize,
    stressed: bool,
    /// Networks that may not evict until the given ms (see [`STRUCK_FOR`]).
    struck: HashMap<Network, u64>,
}

impl Table {
    pub fn new(limits: Limits, min_data_rate: u64) -> Table {
        Table {
            limits,
            min_data_rate,
            next_id: 1,
            slots: HashMap::new(),
            per_ip: HashMap::new(),
            per_network: HashMap::new(),
            leaving: 0,
            stressed: false,
            struck: HashMap::new(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Sessions holding a slot (evicted ones still leaving do not).
    pub fn active(&self) -> usize {
        self.slots.len() - self.leaving
    }

    /// Sessions running, including evicted ones still leaving.
    pub fn sessions(&self) -> usize {
        self.slots.len()
    }

    /// The entry of session `id`, while it runs.
    pub fn entry(&self, id: u64) -> Option<&Arc<Entry>> {
        self.slots.get(&id).map(|slot| &slot.entry)
    }

    /// Every running session's entry.
    pub fn entries(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.slots.values().map(|slot| &slot.entry)
    }

    /// Whether slots run short (with hysteresis).
    pub fn stressed(&self) -> bool {
        self.stressed
    }

    fn update_stress(&mut self) {
        let max = self.limits.max_connections.max(1);
        let used = self.active() * 100;
        if used >= max * STRESS_ON_PERCENT {
            self.stressed = true;
        } else if used < max * STRESS_OFF_PERCENT {
            self.stressed = false;
        }
    }

    fn network_count(&self, ip: Option<IpAddr>) -> usize {
        ip.map_or(0, |ip| {
            self.per_network.get(&Network::of(ip)).copied().unwrap_or(0)
        })
    }

    /// The session to evict for a newcomer at `now_ms`, and how far behind
    /// it is: among those whose client is at least `evict_idle` behind
    /// (never one waiting for someone else, never a message arriving at
    /// rate), first those that never had a command answered (a slowloris
    /// never gets that far), then those of the network holding the most
    /// slots (an attacker's crowd before a small site), then the furthest
    /// behind.
    fn victim(&self, now_ms: u64) -> Option<(u64, u64)> {
        let threshold = u64::try_from(self.limits.evict_idle.as_millis()).unwrap_or(u64::MAX);
        self.slots
            .iter()
            .filter(|(_, s)| !s.leaving)
            .filter_map(|(id, s)| {
                let behind = s.entry.behind_ms(now_ms, self.min_data_rate)?;
                (behind >= threshold).then(|| {
                    let rank = (
                        !s.entry.got_anywhere(),
                        self.network_count(s.entry.ip),
                        behind,
                        // Deterministic among equals: the oldest session.
                        std::cmp::Reverse(*id),
                    );
                    (rank, *id, behind)
                })
            })
            .max_by_key(|(rank, _, _)| *rank)
            .map(|(_, id, behind)| (id, behind))
    }

    pub fn struck(&self, ip: Option<IpAddr>, now_ms: u64) -> bool {
        let ip = ip.map(canonical_ip);
        ip.is_some_and(|ip| {
            self.struck
                .get(&Network::of(ip))
                .is_some_and(|until| *until > now_ms)
        })
    }

    /// Remembers that `ip`'s network lost a session for falling behind.
    /// The memory is bounded: expired records go first, and past four
    /// records per slot nothing new is kept (the newcomer may then evict,
    /// as without the memory).
    fn strike(&mut self, ip: Option<IpAddr>, now_ms: u64) {
        let Some(ip) = ip else { return };
        let cap = self.limits.max_connections.max(16) * 4;
        if self.struck.len() >= cap {
            self.struck.retain(|_, until| *until > now_ms);
            if self.struck.len() >= cap {
                return;
            }
        }
        let until =
            now_ms.saturating_add(u64::try_from(STRUCK_FOR.as_millis()).unwrap_or(u64::MAX));
        self.struck.insert(Network::of(ip), until);
    }

    /// Decides about a new connection from `ip` (None: a Unix socket).
    /// At a full table a newcomer takes the slot of the [`Table::victim`],
    /// unless its network is struck (see [`STRUCK_FOR`]); without a
    /// victim it is refused.
    pub fn admit(&mut self, ip: Option<IpAddr>, now_ms: u64) -> Admission {
        let ip = ip.map(canonical_ip);
        if let Some(ip) = ip {
            if self.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.per_client {
                return Admission::Refused(Refused::Client);
            }
            if self.network_count(Some(ip)) >= self.limits.per_network {
                return Admission::Refused(Refused::Network);
            }
        }
        let mut evict = None;
        if self.active() >= self.limits.max_connections {
            // Evicted sessions leave within a write deadline; bound how
            // many may be on their way out at once.
            if self.leaving >= (self.limits.max_connections / 8).max(8) {
                return Admission::Refused(Refused::Full);
            }
            if self.struck(ip, now_ms) {
                return Admission::Refused(Refused::Full);
            }
            let Some((victim, behind)) = self.victim(now_ms) else {
                return Admission::Refused(Refused::Full);
            };
            let mut victim_ip = None;
            if let Some(slot) = self.slots.get_mut(&victim) {
                slot.leaving = true;
                self.leaving += 1;
                victim_ip = slot.entry.ip;
            }
            self.strike(victim_ip, now_ms);
            evict = Some((victim, Duration::from_millis(behind)));
        }
        let id = self.next_id;
        self.next_id += 1;
        let entry = Arc::new(Entry::new(ip, now_ms));
        self.slots.insert(
            id,
            Slot {
                entry: Arc::clone(&entry),
                leaving: false,
            },
        );
        if let Some(ip) = ip {
            *self.per_ip.entry(ip).or_insert(0) += 1;
            *self.per_network.entry(Network::of(ip)).or_insert(0) += 1;
        }
        self.update_stress();
        Admission::Admitted { id, entry, evict }
    }

    /// The session `id` was cut at its client deadline at `now_ms`: its
    /// network is struck, unless the session was waiting for someone else.
    pub fn timed_out(&mut self, id: u64, now_ms: u64) {
        let ip = match self.slots.get(&id) {
            Some(slot) if slot.entry.behind_ms(now_ms, self.min_data_rate).is_some() => {
                slot.entry.ip
            }
            _ => return,
        };
        self.strike(ip, now_ms);
    }

    /// The session `id` has ended.
    pub fn release(&mut self, id: u64) {
        let Some(slot) = self.slots.remove(&id) else {
            return;
        };
        if slot.leaving {
            self.leaving -= 1;
        }
        if let Some(ip) = slot.entry.ip {
            decrement(&mut self.per_ip, ip);
            decrement(&mut self.per_network, Network::of(ip));
        }
        self.update_stress();
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Postfix's `smtpd_min_data_rate` default, as the client deadline's.
    const RATE: u64 = 500;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn limits(max: usize) -> Limits {
        Limits {
            max_connections: max,
            per_client: 3,
            per_network: 5,
            evict_idle: Duration::from_secs(1),
        }
    }

    fn admitted(a: Admission) -> (u64, Arc<Entry>, Option<(u64, Duration)>) {
        match a {
            Admission::Admitted { id, entry, evict } => (id, entry, evict),
            Admission::Refused(r) => panic!("refused: {r:?}"),
        }
    }

    fn refused(a: Admission) -> Refused {
        match a {
            Admission::Refused(r) => r,
            Admission::Admitted { .. } => panic!("admitted"),
        }
    }

    #[test]
    fn networks() {
        let cases = [
            ("192.0.2.7", "192.0.2.200", true),
            ("192.0.2.7", "192.0.3.7", false),
            ("::ffff:192.0.2.7", "192.0.2.1", true),
            ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", true),
            ("2001:db8:1:2::1", "2001:db8:1:3::1", false),
        ];
        for (a, b, same) in cases {
            let (a, b): (IpAddr, IpAddr) = (a.parse().unwrap(), b.parse().unwrap());
            assert_eq!(Network::of(a) == Network::of(b), same, "{a} {b}");
        }
    }

    #[test]
    fn per_address_and_per_network_limits() {
        let mut t = Table::new(limits(100), RATE);
        for _ in 0..3 {
            admitted(t.admit(ip("192.0.2.1"), 0));
        }
        assert_eq!(refused(t.admit(ip("192.0.2.1"), 0)), Refused::Client);
        // A v4-mapped address is the same client.
        assert_eq!(refused(t.admit(ip("::ffff:192.0.2.1"), 0)), Refused::Client);
        admitted(t.admit(ip("192.0.2.2"), 0));
        let (fifth, _, _) = admitted(t.admit(ip("192.0.2.3"), 0));
        assert_eq!(refused(t.admit(ip("192.0.2.4"), 0)), Refused::Network);
        admitted(t.admit(ip("192.0.3.4"), 0));
        t.release(fifth);
        admitted(t.admit(ip("192.0.2.4"), 0));
        // Unix-socket clients count only against the whole table.
        admitted(t.admit(None, 0));
    }

    #[test]
    fn stress_has_hysteresis() {
        let mut t = Table::new(
            Limits {
                per_client: 100,
                per_network: 100,
                ..limits(10)
            },
            RATE,
        );
        let mut ids = Vec::new();
        for n in 1..=10 {
            let (id, _, _) = admitted(t.admit(ip("192.0.2.1"), 0));
            ids.push(id);
            assert_eq!(t.stressed(), n >= 8, "{n} used");
        }
        // 80% on, below 70% off.
        let expect = [true, true, true, false, false];
        for want in expect {
            t.release(ids.pop().unwrap());
            assert_eq!(t.stressed(), want, "{} used", t.active());
        }
    }

    /// One session of an eviction case, as seen at t = 100 s.
    struct Held {
        addr: &'static str,
        activity: Activity,
        /// Replies it was sent (1: only the greeting).
        replies: u32,
        /// Ms since the last of them.
        waited: u64,
        /// Octets that came since.
        octets: u64,
    }

    const fn held(addr: &'static str, activity: Activity, replies: u32, waited: u64) -> Held {
        Held {
            addr,
            activity,
            replies,
            waited,
            octets: 0,
        }
    }

    /// At a full table: who leaves for whom, and how far behind it was.
    #[test]
    fn eviction() {
        use Activity::*;
        struct Case {
            name: &'static str,
            sessions: Vec<Held>,
            newcomer: &'static str,
            /// (index into `sessions` of the one evicted, ms behind), or
            /// None: the newcomer is refused.
            evicted: Option<(usize, u64)>,
        }
        const NOW: u64 = 100_000;
        let cases = [
            Case {
                name: "the furthest behind goes",
                sessions: vec![
                    held("192.0.2.1", Client, 3, 3_000),
                    held("198.51.100.1", Client, 3, 9_000),
                    held("203.0.113.1", Client, 3, 4_000),
                ],
                newcomer: "10.0.0.1",
                evicted: Some((1, 9_000)),
            },
            Case {
                name: "nobody a second behind: refused",
                sessions: vec![
                    held("192.0.2.1", Client, 1, 999),
                    held("198.51.100.1", Client, 4, 500),
                    held("203.0.113.1", Client, 2, 0),
                ],
                newcomer: "10.0.0.1",
                evicted: None,
            },
            Case {
                name: "never a session waiting for its backend",
                sessions: vec![
                    held("192.0.2.1", Busy, 1, 60_000),
                    held("198.51.100.1", Client, 3, 1_500),
                    held("203.0.113.1", Busy, 3, 60_000),
                ],
                newcomer: "10.0.0.1",
                evicted: Some((1, 1_500)),
            },
            Case {
                name: "a message at the minimum rate stays, one trickled below it goes",
                sessions: vec![
                    // 10 s for 5,000 octets: exactly 500/s.
                    Held {
                        octets: 5_000,
                        ..held("192.0.2.1", Message, 5, 10_000)
                    },
                    // 10 s for 100 octets: earned 0.2 s, 9.8 s behind.
                    Held {
                        octets: 100,
                        ..held("198.51.100.1", Message, 5, 10_000)
                    },
                    held("203.0.113.1", Busy, 3, 60_000),
                ],
                newcomer: "10.0.0.1",
                evicted: Some((1, 9_800)),
            },
            Case {
                name: "a fast message is never behind, however long it runs",
                sessions: vec![
                    Held {
                        octets: 50_000_000,
                        ..held("192.0.2.1", Message, 5, 60_000)
                    },
                    held("198.51.100.1", Client, 3, 900),
                    held("203.0.113.1", Busy, 3, 60_000),
                ],
                newcomer: "10.0.0.1",
                evicted: None,
            },
            Case {
                name: "octets of an unanswered command line earn nothing",
                sessions: vec![
                    Held {
                        octets: 17,
                        ..held("192.0.2.1", Client, 1, 8_000)
                    },
                    held("198.51.100.1", Client, 3, 100),
                    held("203.0.113.1", Client, 3, 200),
                ],
                newcomer: "10.0.0.1",
                evicted: Some((0, 8_000)),
            },
            Case {
                name: "one that never had a command answered goes before one that did",
                sessions: vec![
                    held("192.0.2.1", Client, 6, 30_000),
                    held("198.51.100.1", Client, 1, 1_200),
                    held("203.0.113.1", Client, 1, 1_100),
                ],
                newcomer: "10.0.0.1",
                evicted: Some((1, 1_200)),
            },
            Case {
                name: "among equals, the network holding the most slots",
                sessions: vec![
                    held("192.0.2.1", Client, 1, 9_000),
                    held("198.51.100.1", Client, 1, 3_000),
                    held("198.51.100.2", Client, 1, 2_000),
                ],
                newcomer: "10.0.0.1",
                evicted: Some((1, 3_000)),
            },
            Case {
                name: "a session just greeted is not behind, whoever it is",
                sessions: vec![
                    held("192.0.2.1", Client, 1, 0),
                    held("198.51.100.1", Client, 1, 10),
                    held("203.0.113.1", Client, 2, 5),
                ],
                newcomer: "198.51.100.9",
                evicted: None,
            },
            Case {
                name: "a newcomer from a crowded network still displaces a stalled session",
                sessions: vec![
                    held("192.0.2.1", Client, 2, 5_000),
                    held("198.51.100.1", Client, 2, 100),
                    held("198.51.100.2", Client, 2, 100),
                ],
                newcomer: "198.51.100.9",
                evicted: Some((0, 5_000)),
            },
        ];
        for case in cases {
            let mut t = Table::new(limits(case.sessions.len()), RATE);
            let mut ids = Vec::new();
            for h in &case.sessions {
                let (id, entry, evict) = admitted(t.admit(ip(h.addr), 0));
                assert!(evict.is_none());
                for _ in 0..h.replies {
                    entry.answered(NOW - h.waited);
                }
                entry.set_activity(h.activity);
                entry.received(usize::try_from(h.octets).unwrap());
                ids.push(id);
            }
            let got = t.admit(ip(case.newcomer), NOW);
            match (case.evicted, got) {
                (Some((i, behind)), Admission::Admitted { evict, .. }) => {
                    let (victim, was) = evict.expect(case.name);
                    assert_eq!(victim, ids[i], "{}", case.name);
                    assert_eq!(was.as_millis(), u128::from(behind), "{}", case.name);
                    // The evicted one no longer counts: the table is full again.
                    assert_eq!(t.active(), case.sessions.len(), "{}", case.name);
                }
                (None, Admission::Refused(r)) => assert_eq!(r, Refused::Full, "{}", case.name),
                (want, got) => panic!("{}: wanted {want:?}, got {got:?}", case.name),
            }
        }
    }

    /// A slowloris crowd reconnecting as fast as it is cut keeps the table
    /// full; a normal client (greeted, answered at once) finds a slot each
    /// time it comes back, and the crowd's reconnections evict nobody.
    #[test]
    fn a_normal_client_gets_through_a_reconnecting_crowd() {
        let mut t = Table::new(
            Limits {
                per_client: 10,
                per_network: 50,
                ..limits(100)
            },
            RATE,
        );
        // Trickler sessions by id, with their address.
        let mut tricklers = HashMap::new();
        let mut cut: Vec<String> = Vec::new();
        let mut now = 0;
        for n in 0..100 {
            let addr = format!("127.1.{}.1", n % 20);
            let (id, entry, evict) = admitted(t.admit(ip(&addr), now));
            assert!(evict.is_none());
            entry.answered(now);
            tricklers.insert(id, addr);
            now += 10;
        }
        let mut evictions = 0;
        for round in 0..200 {
            now += 150;
            // A normal client: greeted, then each command answered at once.
            let (me, entry, evict) = match t.admit(ip("127.0.0.1"), now) {
                Admission::Admitted { id, entry, evict } => (id, entry, evict),
                Admission::Refused(r) => panic!("round {round}: refused ({r:?})"),
            };
            entry.answered(now + 1);
            if let Some((id, _)) = evict {
                let addr = tricklers.remove(&id).expect("a trickler was evicted");
                t.release(id);
                cut.push(addr);
                evictions += 1;
            }
            // Whoever was cut comes back at once while the client is
            // served; the table is full.
            now += 2;
            for addr in std::mem::take(&mut cut) {
                match t.admit(ip(&addr), now) {
                    Admission::Admitted { id, entry, evict } => {
                        entry.answered(now);
                        tricklers.insert(id, addr);
                        // Its network was just struck: it evicts nobody.
                        assert!(evict.is_none(), "round {round}");
                    }
                    Admission::Refused(_) => cut.push(addr),
                }
            }
            entry.answered(now + 1);
            t.release(me);
            // The table is full again before the client's next message.
            for addr in std::mem::take(&mut cut) {
                if let Admission::Admitted { id, entry, evict } = t.admit(ip(&addr), now) {
                    entry.answered(now);
                    tricklers.insert(id, addr);
                    assert!(evict.is_none(), "round {round}");
                } else {
                    cut.push(addr);
                }
            }
            assert_eq!(t.active(), 100, "round {round}");
        }
        assert_eq!(evictions, 200);
    }

    #[test]
    fn an_evicted_session_is_not_chosen_twice_and_leaving_is_bounded() {
        let mut t = Table::new(
            Limits {
                per_client: 100,
                per_network: 100,
                ..limits(16)
            },
            RATE,
        );
        for n in 0..16 {
            let (_, entry, _) = admitted(t.admit(ip(&format!("192.0.{n}.1")), 0));
            entry.answered(0);
        }
        let mut victims = std::collections::HashSet::new();
        for n in 0..8 {
            let (_, entry, evict) = admitted(t.admit(ip(&format!("10.0.{n}.1")), 10_000));
            entry.set_activity(Activity::Busy);
            assert!(victims.insert(evict.expect("a victim").0));
        }
        // Eight on their way out at once at most (max/8, at least 8).
        assert_eq!(refused(t.admit(ip("10.1.0.1"), 10_000)), Refused::Full);
        for v in victims {
            t.release(v);
        }
        assert_eq!(t.active(), 16);
        admitted(t.admit(ip("10.1.0.1"), 10_000));
    }

    /// A network that lost a session for falling behind takes free slots
    /// but evicts nobody for STRUCK_FOR; other networks are not affected.
    #[test]
    fn struck_networks_do_not_evict() {
        let struck_ms = u64::try_from(STRUCK_FOR.as_millis()).unwrap();
        // (how the network was struck at t = 10 s, newcomer's address, when
        // it comes, whether it may evict)
        #[derive(Debug, Clone, Copy)]
        enum How {
            Evicted,
            TimedOut,
            TimedOutWaitingForBackend,
        }
        use How::*;
        let cases = [
            (Evicted, "192.0.2.9", 11_000, false),
            (Evicted, "192.0.2.9", 10_000 + struck_ms - 1, false),
            (Evicted, "192.0.2.9", 10_000 + struck_ms, true),
            (Evicted, "198.51.100.9", 11_000, true),
            (TimedOut, "192.0.2.200", 11_000, false),
            (TimedOut, "198.51.100.9", 11_000, true),
            (TimedOutWaitingForBackend, "192.0.2.9", 11_000, true),
        ];
        for (how, newcomer, at, may_evict) in cases {
            let mut t = Table::new(
                Limits {
                    per_client: 10,
                    per_network: 10,
                    ..limits(3)
                },
                RATE,
            );
            let (a, entry_a, _) = admitted(t.admit(ip("192.0.2.1"), 0));
            entry_a.answered(0);
            for addr in ["203.0.113.1", "203.0.113.2"] {
                let (_, entry, _) = admitted(t.admit(ip(addr), 0));
                // These got somewhere: 192.0.2.1 is the first victim.
                entry.answered(0);
                entry.answered(0);
            }
            match how {
                Evicted => {
                    let (_, entry, evict) = admitted(t.admit(ip("10.0.0.1"), 10_000));
                    entry.answered(10_000);
                    assert_eq!(evict.map(|(id, _)| id), Some(a));
                    t.release(a);
                }
                TimedOut | TimedOutWaitingForBackend => {
                    if matches!(how, TimedOutWaitingForBackend) {
                        entry_a.set_activity(Activity::Busy);
                    }
                    t.timed_out(a, 10_000);
                    t.release(a);
                    let (_, entry, evict) = admitted(t.admit(ip("10.0.0.1"), 10_000));
                    entry.answered(10_000);
                    assert!(evict.is_none());
                }
            }
            // The table is full; the two 203.0.113 sessions are far behind.
            assert_eq!(t.active(), 3);
            let got = t.admit(ip(newcomer), at);
            match (may_evict, got) {
                (true, Admission::Admitted { evict: Some(_), .. }) => {}
                (false, Admission::Refused(Refused::Full)) => {
                    // A free slot is still its to take.
                    let (_, evict) = match t.slots.keys().next().copied() {
                        Some(id) => {
                            t.release(id);
                            let (_, _, evict) = admitted(t.admit(ip(newcomer), at));
                            (id, evict)
                        }
                        None => unreachable!(),
                    };
                    assert!(evict.is_none());
                }
                (want, got) => panic!("{how:?} {newcomer} at {at}: may evict {want}, got {got:?}"),
            }
        }
    }

    #[test]
    fn the_memory_of_struck_networks_is_bounded() {
        let mut t = Table::new(limits(16), RATE);
        for n in 0..10_000u32 {
            t.strike(ip(&format!("10.{}.{}.1", n >> 8, n & 255)), u64::from(n));
        }
        // Four per slot.
        assert_eq!(t.struck.len(), 64);
        // Expired records make room.
        t.strike(
            ip("192.0.2.1"),
            10_000 + 2 * u64::try_from(STRUCK_FOR.as_millis()).unwrap(),
        );
        assert_eq!(t.struck.len(), 1);
    }
}
