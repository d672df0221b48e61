//! Route planning (RFC 5321 §5.1): which hosts to try, in which order.

/// One host to try for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRoute {
    pub host: String,
    pub preference: u16,
    /// The domain itself, because it has no MX records.
    pub implicit: bool,
}

/// Orders exchangers by preference, shuffling hosts of equal preference so
/// load spreads as RFC 5321 §5.1 asks. `seed` makes the shuffle testable.
pub fn plan(mut exchangers: Vec<(u16, String)>, seed: u64) -> Vec<MxRoute> {
    exchangers.sort();
    exchangers.dedup_by(|a, b| a.1 == b.1);
    // Stable order after dedup: sort by preference, then shuffle each group.
    exchangers.sort_by_key(|(pref, _)| *pref);
    // splitmix64: good enough to spread load, and seedable for tests.
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut start = 0;
    while start < exchangers.len() {
        let pref = exchangers[start].0;
        let end = exchangers[start..]
            .iter()
            .position(|(p, _)| *p != pref)
            .map_or(exchangers.len(), |n| start + n);
        for i in (start + 1..end).rev() {
            let j = start + (next() % (i - start + 1) as u64) as usize;
            exchangers.swap(i, j);
        }
        start = end;
    }
    exchangers
        .into_iter()
        .map(|(preference, host)| MxRoute {
            host,
            preference,
            implicit: false,
        })
        .collect()
}

/// The implicit MX: the domain itself (RFC 5321 §5.1).
pub fn implicit(domain: &str) -> Vec<MxRoute> {
    vec![MxRoute {
        host: domain.to_string(),
        preference: 0,
        implicit: true,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_order_and_shuffle() {
        let mx = vec![
            (20, "c.example".to_string()),
            (10, "a.example".to_string()),
            (10, "b.example".to_string()),
            (10, "a.example".to_string()),
            (30, "d.example".to_string()),
        ];
        let mut firsts = std::collections::BTreeSet::new();
        for seed in 0..50 {
            let route = plan(mx.clone(), seed);
            let hosts: Vec<_> = route.iter().map(|r| r.host.as_str()).collect();
            assert_eq!(hosts.len(), 4, "duplicates removed");
            assert_eq!(&hosts[2..], ["c.example", "d.example"]);
            assert!(hosts[..2].contains(&"a.example") && hosts[..2].contains(&"b.example"));
            firsts.insert(hosts[0].to_string());
        }
        assert_eq!(firsts.len(), 2, "equal preferences are shuffled");
    }
}
