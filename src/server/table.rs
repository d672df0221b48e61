//! Who holds a connection slot: counts per client address and per network,
//! the stress level, and the choice of a session to evict when a newcomer
//! finds the table full. Sans-IO: the time comes in as milliseconds since
//! the harness started, so the rules are tested in tables below.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

/// The connection limits of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most connections at once.
    pub max_connections: usize,
    /// Most connections at once from one client address.
    pub per_client: usize,
    /// Most connections at once from one network (an IPv4 /24, an IPv6 /64).
    pub per_network: usize,
    /// A session waiting this long for its client without anything done may
    /// be evicted for a newcomer when the table is full.
    pub evict_idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1000,
            per_client: 50,
            per_network: 100,
            evict_idle: Duration::from_secs(5),
        }
    }
}

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
    /// Waiting for someone else (the backend, a remote MX): the client is
    /// not to blame and the session is never evicted.
    Busy = 1,
    /// Receiving a message: evicted only when no byte came for a while.
    Message = 2,
}

/// One admitted connection, shared between its session and the table.
#[derive(Debug)]
pub struct Entry {
    pub(crate) ip: Option<IpAddr>,
    /// When the session last got something done (a command answered, a
    /// piece of message received), in ms since the harness started.
    progress_ms: AtomicU64,
    activity: AtomicU8,
}

impl Entry {
    fn new(ip: Option<IpAddr>, now_ms: u64) -> Entry {
        Entry {
            ip,
            progress_ms: AtomicU64::new(now_ms),
            activity: AtomicU8::new(Activity::Client as u8),
        }
    }

    pub fn progress(&self, now_ms: u64) {
        self.progress_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn set_activity(&self, a: Activity) {
        self.activity.store(a as u8, Ordering::Relaxed);
    }

    fn idle_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.progress_ms.load(Ordering::Relaxed))
    }

    fn evictable(&self, now_ms: u64, evict_idle: Duration) -> bool {
        self.activity.load(Ordering::Relaxed) != Activity::Busy as u8
            && u128::from(self.idle_ms(now_ms)) >= evict_idle.as_millis()
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
    /// leave for it (already counted as leaving).
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
    next_id: u64,
    slots: HashMap<u64, Slot>,
    per_ip: HashMap<IpAddr, usize>,
    per_network: HashMap<Network, usize>,
    /// Evicted sessions still writing their `421`.
    leaving: usize,
    stressed: bool,
}

impl Table {
    pub fn new(limits: Limits) -> Table {
        Table {
            limits,
            next_id: 1,
            slots: HashMap::new(),
            per_ip: HashMap::new(),
            per_network: HashMap::new(),
            leaving: 0,
            stressed: false,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Sessions holding a slot (evicted ones still leaving do not).
    pub fn active(&self) -> usize {
        self.slots.len() - self.leaving
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

    /// Decides about a new connection from `ip` (None: a Unix socket).
    ///
    /// At a full table the session that must leave is one waiting for its
    /// client with nothing done for at least `evict_idle` (never one whose
    /// backend is busy, never a message arriving at pace), from the network
    /// holding the most slots, the longest idle first. A newcomer may only
    /// displace a session whose network holds more slots than its own: an
    /// attacker's many connections make its own sessions the first to go,
    /// and it cannot push out the one session of a small site.
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
            let own = self.network_count(ip);
            let victim = self
                .slots
                .iter()
                .filter(|(_, s)| !s.leaving && s.entry.evictable(now_ms, self.limits.evict_idle))
                .map(|(id, s)| (self.network_count(s.entry.ip), s.entry.idle_ms(now_ms), *id))
                .filter(|(count, _, _)| ip.is_none() || *count > own)
                .max();
            let Some((_, idle, victim)) = victim else {
                return Admission::Refused(Refused::Full);
            };
            if let Some(slot) = self.slots.get_mut(&victim) {
                slot.leaving = true;
                self.leaving += 1;
            }
            evict = Some((victim, Duration::from_millis(idle)));
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

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn limits(max: usize) -> Limits {
        Limits {
            max_connections: max,
            per_client: 3,
            per_network: 5,
            evict_idle: Duration::from_secs(2),
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
        let mut t = Table::new(limits(100));
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
        let mut t = Table::new(Limits {
            per_client: 100,
            per_network: 100,
            ..limits(10)
        });
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

    /// At a full table: who leaves for whom.
    #[test]
    fn eviction() {
        struct Case {
            name: &'static str,
            /// (address, activity, ms since its last progress)
            sessions: &'static [(&'static str, Activity, u64)],
            newcomer: &'static str,
            /// index into `sessions` of the one evicted, or None (refused)
            evicted: Option<usize>,
        }
        use Activity::*;
        let cases = [
            Case {
                name: "the longest idle client goes",
                sessions: &[
                    ("192.0.2.1", Client, 3_000),
                    ("198.51.100.1", Client, 9_000),
                    ("203.0.113.1", Client, 4_000),
                ],
                newcomer: "10.0.0.1",
                evicted: Some(1),
            },
            Case {
                name: "nobody idle long enough: refused",
                sessions: &[
                    ("192.0.2.1", Client, 1_000),
                    ("198.51.100.1", Client, 1_999),
                    ("203.0.113.1", Client, 0),
                ],
                newcomer: "10.0.0.1",
                evicted: None,
            },
            Case {
                name: "never a session waiting for its backend",
                sessions: &[
                    ("192.0.2.1", Busy, 60_000),
                    ("198.51.100.1", Client, 2_500),
                    ("203.0.113.1", Busy, 60_000),
                ],
                newcomer: "10.0.0.1",
                evicted: Some(1),
            },
            Case {
                name: "a message arriving at pace stays; a stalled one goes",
                sessions: &[
                    ("192.0.2.1", Message, 100),
                    ("198.51.100.1", Message, 30_000),
                    ("203.0.113.1", Busy, 60_000),
                ],
                newcomer: "10.0.0.1",
                evicted: Some(1),
            },
            Case {
                name: "the network holding most slots goes first",
                sessions: &[
                    ("192.0.2.1", Client, 60_000),
                    ("198.51.100.1", Client, 3_000),
                    ("198.51.100.2", Client, 2_000),
                ],
                newcomer: "10.0.0.1",
                evicted: Some(1),
            },
            Case {
                name: "no newcomer displaces a smaller network than its own",
                sessions: &[
                    ("192.0.2.1", Client, 60_000),
                    ("198.51.100.1", Client, 30_000),
                    ("198.51.100.2", Client, 20_000),
                ],
                newcomer: "192.0.2.9",
                evicted: Some(1),
            },
            Case {
                name: "nor one of the same size",
                sessions: &[
                    ("192.0.2.1", Client, 60_000),
                    ("198.51.100.1", Client, 30_000),
                    ("203.0.113.1", Client, 30_000),
                ],
                newcomer: "192.0.2.9",
                evicted: None,
            },
        ];
        for case in cases {
            let mut t = Table::new(limits(case.sessions.len()));
            let mut ids = Vec::new();
            for (addr, activity, idle) in case.sessions {
                let (id, entry, evict) = admitted(t.admit(ip(addr), 0));
                assert!(evict.is_none());
                entry.set_activity(*activity);
                entry.progress(100_000 - idle);
                ids.push(id);
            }
            let got = t.admit(ip(case.newcomer), 100_000);
            match (case.evicted, got) {
                (Some(i), Admission::Admitted { evict, .. }) => {
                    let (victim, idle) = evict.expect(case.name);
                    assert_eq!(victim, ids[i], "{}", case.name);
                    assert_eq!(idle.as_millis(), u128::from(case.sessions[i].2));
                    // The evicted one no longer counts: the table is full again.
                    assert_eq!(t.active(), case.sessions.len(), "{}", case.name);
                }
                (None, Admission::Refused(r)) => assert_eq!(r, Refused::Full, "{}", case.name),
                (want, got) => panic!("{}: wanted {want:?}, got {got:?}", case.name),
            }
        }
    }

    #[test]
    fn an_evicted_session_is_not_chosen_twice_and_leaving_is_bounded() {
        let mut t = Table::new(Limits {
            per_client: 100,
            per_network: 100,
            ..limits(16)
        });
        for n in 0..16 {
            let (_, entry, _) = admitted(t.admit(ip(&format!("192.0.{n}.1")), 0));
            entry.progress(0);
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
}
