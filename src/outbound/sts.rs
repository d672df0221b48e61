//! MTA-STS (RFC 8461), the sans-IO part: the `_mta-sts` TXT record, the
//! policy file, MX patterns, and what to do with a cached policy.
//!
//! Nothing here does I/O: [`sts_fetch`](super::sts_fetch) fetches the policy
//! over HTTPS, [`crate::state::sts_cache`] keeps it between runs, and
//! delivery ([`super::deliver`]) applies it to the MX hosts it tries.

use std::fmt;

use super::outcome::TlsFailure;
use crate::state::sts_cache::valid_id;
use crate::transport::CertVerdict;

/// Longest `max_age` a policy may ask for: a year (RFC 8461 §3.2). Longer
/// values are capped, not refused.
pub const MAX_AGE_CAP: u64 = 31_557_600;

/// Largest policy body taken (RFC 8461 §3.3 suggests 64 kilobytes).
pub const MAX_POLICY_SIZE: usize = 64 * 1024;

/// A cached policy whose `id` is unchanged is fetched again once it is this
/// old, so a policy in use does not expire (RFC 8461 §10.2: senders SHOULD
/// refresh cached policies before they expire). A failed refresh keeps it.
pub const REFRESH_AFTER: u64 = 24 * 3600;

/// The policy mode (RFC 8461 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to matching MX hosts over TLS with a valid certificate.
    Enforce,
    /// Deliver as without a policy; report (log) what would have failed.
    Testing,
    /// As if there were no policy (how a domain withdraws one).
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `mx:` pattern: a host name, or `*.` and a domain, where the `*`
/// stands for exactly one label (RFC 8461 §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxPattern {
    wildcard: bool,
    /// Lower case, no trailing dot.
    domain: String,
}

impl MxPattern {
    /// Parses `sts-policy-mx-value = ["*."] Domain` (RFC 5321 domain syntax).
    pub fn parse(value: &str) -> Option<MxPattern> {
        let (wildcard, domain) = match value.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        if !is_domain(domain) {
            return None;
        }
        Some(MxPattern {
            wildcard,
            domain: domain.to_ascii_lowercase(),
        })
    }

    /// Whether the MX host `host` matches: case-insensitive, a trailing dot
    /// ignored; `*.example.com` matches `mx.example.com` but neither
    /// `example.com` nor `a.b.example.com` (RFC 8461 §4.1).
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if !self.wildcard {
            return host == self.domain;
        }
        match host.split_once('.') {
            Some((label, rest)) => !label.is_empty() && rest == self.domain,
            None => false,
        }
    }
}

impl fmt::Display for MxPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.domain)
    }
}

/// RFC 5321 §4.1.2 `Domain`: dot-separated labels of letters, digits and
/// inner hyphens.
fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A parsed policy file (RFC 8461 §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub mx: Vec<MxPattern>,
    /// Seconds, at most [`MAX_AGE_CAP`].
    pub max_age: u64,
}

impl Policy {
    /// Whether `host` matches one of the `mx` patterns.
    pub fn mx_matches(&self, host: &str) -> bool {
        self.mx.iter().any(|p| p.matches(host))
    }

    /// The `mx` patterns as one comma-separated list, for the log.
    pub fn mx_list(&self) -> String {
        let patterns: Vec<String> = self.mx.iter().map(MxPattern::to_string).collect();
        patterns.join(",")
    }
}

/// Why a policy file is not a valid policy (reported as
/// `sts-policy-invalid`, RFC 8460 §4.3.4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("larger than {MAX_POLICY_SIZE} bytes")]
    TooLarge,
    #[error("not UTF-8 text")]
    NotText,
    #[error("line {0} is not a 'key: value' field")]
    Syntax(usize),
    #[error("no version field")]
    NoVersion,
    #[error("version {0:?}, not STSv1")]
    Version(String),
    #[error("no mode field")]
    NoMode,
    #[error("mode {0:?} is not enforce, testing or none")]
    Mode(String),
    #[error("no max_age field")]
    NoMaxAge,
    #[error("max_age {0:?} is not 1 to 10 digits")]
    MaxAge(String),
    #[error("mx {0:?} is not a host name or *.domain")]
    Mx(String),
    #[error("mode {0} without any mx field")]
    NoMx(Mode),
}

/// Parses a policy file. Lines end in LF or CRLF; blank lines are skipped;
/// unknown fields are ignored; of a field other than `mx` given twice, the
/// first counts (RFC 8461 §3.2).
pub fn parse_policy(body: &[u8]) -> Result<Policy, PolicyError> {
    if body.len() > MAX_POLICY_SIZE {
        return Err(PolicyError::TooLarge);
    }
    let text = std::str::from_utf8(body).map_err(|_| PolicyError::NotText)?;
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    for (n, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let line = line.trim_matches([' ', '\t']);
        if line.is_empty() {
            continue;
        }
        let (key, value) = line.split_once(':').ok_or(PolicyError::Syntax(n + 1))?;
        let value = value.trim_matches([' ', '\t']);
        if !is_field_name(key) {
            return Err(PolicyError::Syntax(n + 1));
        }
        match key {
            "version" => {
                version.get_or_insert(value);
            }
            "mode" => {
                mode.get_or_insert(value);
            }
            "max_age" => {
                max_age.get_or_insert(value);
            }
            "mx" => mx.push(MxPattern::parse(value).ok_or_else(|| PolicyError::Mx(value.into()))?),
            _ => {}
        }
    }
    match version {
        None => return Err(PolicyError::NoVersion),
        Some("STSv1") => {}
        Some(other) => return Err(PolicyError::Version(other.into())),
    }
    let mode = match mode {
        None => return Err(PolicyError::NoMode),
        Some("enforce") => Mode::Enforce,
        Some("testing") => Mode::Testing,
        Some("none") => Mode::None,
        Some(other) => return Err(PolicyError::Mode(other.into())),
    };
    let max_age = match max_age {
        None => return Err(PolicyError::NoMaxAge),
        Some(v) if (1..=10).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()) => v
            .parse::<u64>()
            .map_err(|_| PolicyError::MaxAge(v.into()))?
            .min(MAX_AGE_CAP),
        Some(v) => return Err(PolicyError::MaxAge(v.into())),
    };
    if mx.is_empty() && mode != Mode::None {
        return Err(PolicyError::NoMx(mode));
    }
    Ok(Policy { mode, mx, max_age })
}

/// `(ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")`.
fn is_field_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_-.".contains(c))
}

/// What the `_mta-sts.<domain>` TXT lookup said (RFC 8461 §3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// No record starting with `v=STSv1` (or no such name).
    Absent,
    /// Several such records, or one that does not parse: treated as no
    /// record (a cached policy still applies, §3.1).
    Invalid(String),
    /// The lookup failed (timeout, SERVFAIL).
    Failed(String),
    /// The policy's current id.
    Id(String),
}

/// Reads the TXT records at `_mta-sts.<domain>`: records that do not begin
/// with `v=STSv1` are discarded; exactly one must remain (RFC 8461 §3.1).
pub fn parse_txt(records: &[String]) -> Discovery {
    let sts: Vec<&String> = records.iter().filter(|r| is_sts_record(r)).collect();
    match sts.as_slice() {
        [] => Discovery::Absent,
        [one] => match txt_id(one) {
            Ok(id) => Discovery::Id(id),
            Err(why) => Discovery::Invalid(format!("{why}: {one:?}")),
        },
        many => Discovery::Invalid(format!("{} v=STSv1 records", many.len())),
    }
}

/// `v=STSv1` followed by the end, white space or `;` (RFC 8461 erratum
/// 6285: white space before the `;` is allowed by the ABNF).
fn is_sts_record(record: &str) -> bool {
    record.strip_prefix("v=STSv1").is_some_and(|rest| {
        rest.trim_start_matches([' ', '\t']).is_empty()
            || rest.trim_start_matches([' ', '\t']).starts_with(';')
    })
}

/// The `id` of one `v=STSv1` record: `id=` 1 to 32 letters and digits;
/// other fields must be `name=value` and are ignored.
fn txt_id(record: &str) -> Result<String, &'static str> {
    let mut fields = record.split(';').map(|f| f.trim_matches([' ', '\t']));
    fields.next(); // v=STSv1
    let mut id = None;
    for field in fields {
        if field.is_empty() {
            continue; // the optional trailing ';'
        }
        let (name, value) = field.split_once('=').ok_or("a field without '='")?;
        if !is_field_name(name) || value.is_empty() {
            return Err("a malformed field");
        }
        if name == "id" && id.is_none() {
            if !valid_id(value) {
                return Err("id is not 1 to 32 letters and digits");
            }
            id = Some(value.to_string());
        }
    }
    id.ok_or("no id field")
}

/// A policy as kept between deliveries, with the id it was fetched under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub id: String,
    pub policy: Policy,
    /// Unix time of the fetch.
    pub fetched: u64,
    /// The policy file as served (for reports: RFC 8460 `policy-string`).
    pub body: String,
}

impl Cached {
    /// Unix time after which the policy no longer applies.
    pub fn expires(&self) -> u64 {
        self.fetched.saturating_add(self.policy.max_age)
    }

    pub fn is_valid(&self, now: u64) -> bool {
        now < self.expires()
    }
}

/// What to do after the TXT lookup, given the cache (RFC 8461 §3.3, §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The cached policy stands (same id, or no usable record now).
    UseCached,
    /// Fetch the policy; if that fails, a valid cached one still applies.
    Fetch { id: String },
    /// No policy: deliver as the configured TLS policy says.
    NoPolicy,
}

/// Decides whether to use the cache or fetch:
/// - a record whose id differs from the cached one (or no cache, or an
///   expired one, or one older than [`REFRESH_AFTER`]): fetch;
/// - the same id: the cached policy;
/// - no usable record: a valid cached policy still applies ("absence of a
///   usable TXT record is not by itself sufficient to remove a sender's
///   previously cached policy", §3.1); without one, no policy.
pub fn next_step(cached: Option<&Cached>, found: &Discovery, now: u64) -> Next {
    let valid = cached.filter(|c| c.is_valid(now));
    match (found, valid) {
        (Discovery::Id(id), Some(c))
            if *id == c.id && now.saturating_sub(c.fetched) < REFRESH_AFTER =>
        {
            Next::UseCached
        }
        (Discovery::Id(id), _) => Next::Fetch { id: id.clone() },
        (_, Some(_)) => Next::UseCached,
        (_, None) => Next::NoPolicy,
    }
}

/// How far one session with an MX host got with encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsSeen<'a> {
    /// No session to judge (no connection, or it failed before STARTTLS
    /// for another reason).
    NotReached,
    /// The MX did not offer STARTTLS or refused it, or the whole
    /// transaction went in plaintext.
    NoStartTls,
    /// The TLS handshake failed.
    HandshakeFailed,
    /// Encrypted (TLS or XPONY), with the verdict on the server's identity.
    Established(Option<&'a CertVerdict>),
}

/// Judges one session against a policy's requirements (RFC 8461 §4.2:
/// STARTTLS, and a certificate that is PKIX-valid for the MX host name):
/// `None` when there is nothing to judge.
pub fn judge_session(seen: TlsSeen<'_>) -> Option<Result<(), (TlsFailure, String)>> {
    let failed = |kind, why: &str| Some(Err((kind, why.to_string())));
    match seen {
        TlsSeen::NotReached => None,
        TlsSeen::NoStartTls => failed(TlsFailure::StarttlsNotSupported, "no STARTTLS"),
        TlsSeen::HandshakeFailed => failed(TlsFailure::ValidationFailure, "TLS handshake failed"),
        TlsSeen::Established(Some(v)) if v.is_verified() => Some(Ok(())),
        TlsSeen::Established(Some(CertVerdict::Untrusted(why))) => {
            let kind = match why.as_str() {
                "name mismatch" => TlsFailure::CertificateHostMismatch,
                "expired" => TlsFailure::CertificateExpired,
                "untrusted issuer" | "self-signed" => TlsFailure::CertificateNotTrusted,
                _ => TlsFailure::ValidationFailure,
            };
            failed(kind, why)
        }
        TlsSeen::Established(_) => failed(TlsFailure::ValidationFailure, "not verified"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> MxPattern {
        MxPattern::parse(s).unwrap()
    }

    #[test]
    fn mx_patterns_match_as_rfc_8461_4_1_says() {
        for (pattern_text, host, matches) in [
            ("mx.example.com", "mx.example.com", true),
            ("mx.example.com", "MX.Example.COM.", true),
            ("mx.example.com", "mx2.example.com", false),
            ("mx.example.com", "example.com", false),
            ("*.example.com", "mx.example.com", true),
            ("*.example.com", "MX1.EXAMPLE.COM", true),
            ("*.example.com", "mx.example.com.", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "a.b.example.com", false),
            ("*.example.com", ".example.com", false),
            ("*.example.com", "mx.example.net", false),
            ("*.example.com", "mxexample.com", false),
            ("mx.example.com.", "mx.example.com", true),
        ] {
            assert_eq!(
                pattern(pattern_text).matches(host),
                matches,
                "{pattern_text} vs {host}"
            );
        }
        for bad in [
            "",
            "*",
            "*.",
            "mx*.example.com",
            "a..b",
            "-a.b",
            "a b",
            "*.*.x",
        ] {
            assert_eq!(MxPattern::parse(bad), None, "{bad:?}");
        }
    }

    const ENFORCE: &str = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n";

    #[test]
    fn policies_parse_as_rfc_8461_3_2_says() {
        let ok = |body: &str| parse_policy(body.as_bytes());
        let enforce = ok(ENFORCE).unwrap();
        assert_eq!(enforce.mode, Mode::Enforce);
        assert_eq!(enforce.max_age, 604_800);
        assert_eq!(enforce.mx_list(), "mail.example.com,*.example.net");
        for (body, want) in [
            // LF line ends, no final line end, white space after values.
            (
                "version: STSv1\nmode: testing\nmx: mx.example.org\nmax_age: 86400",
                Ok((Mode::Testing, 86_400, 1)),
            ),
            (
                "version:STSv1 \nmode:\tenforce\t\nmx: mx.example.org\nmax_age: 1\n\n",
                Ok((Mode::Enforce, 1, 1)),
            ),
            // Unknown fields ignored, fields in any order, first of a repeat counts.
            (
                "mode: enforce\nx-extra: whatever it says\nmx: a.example\nmax_age: 10\nversion: STSv1\nmode: none\nmax_age: 99",
                Ok((Mode::Enforce, 10, 1)),
            ),
            // max_age capped at a year; mode none needs no mx.
            (
                "version: STSv1\nmode: none\nmax_age: 9999999999\n",
                Ok((Mode::None, MAX_AGE_CAP, 0)),
            ),
            // Errors.
            (
                "version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1\n",
                Err(PolicyError::Version("STSv2".into())),
            ),
            (
                "mode: enforce\nmx: a.b\nmax_age: 1\n",
                Err(PolicyError::NoVersion),
            ),
            (
                "version: STSv1\nmode: Enforce\nmx: a.b\nmax_age: 1\n",
                Err(PolicyError::Mode("Enforce".into())),
            ),
            (
                "version: STSv1\nmx: a.b\nmax_age: 1\n",
                Err(PolicyError::NoMode),
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.b\n",
                Err(PolicyError::NoMaxAge),
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 12345678901\n",
                Err(PolicyError::MaxAge("12345678901".into())),
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: -1\n",
                Err(PolicyError::MaxAge("-1".into())),
            ),
            (
                "version: STSv1\nmode: enforce\nmax_age: 1\n",
                Err(PolicyError::NoMx(Mode::Enforce)),
            ),
            (
                "version: STSv1\nmode: testing\nmx: mx*.example.com\nmax_age: 1\n",
                Err(PolicyError::Mx("mx*.example.com".into())),
            ),
            (
                "version: STSv1\nmode enforce\nmx: a.b\nmax_age: 1\n",
                Err(PolicyError::Syntax(2)),
            ),
            (
                "<html><body>not found</body></html>",
                Err(PolicyError::Syntax(1)),
            ),
        ] {
            let got = ok(body).map(|p| (p.mode, p.max_age, p.mx.len()));
            assert_eq!(got, want, "{body:?}");
        }
        assert_eq!(
            parse_policy(b"version: STSv1\xff\n"),
            Err(PolicyError::NotText)
        );
        let big = format!("{ENFORCE}{}", "x: y\n".repeat(MAX_POLICY_SIZE / 5));
        assert_eq!(parse_policy(big.as_bytes()), Err(PolicyError::TooLarge));
    }

    #[test]
    fn txt_records_as_rfc_8461_3_1_says() {
        let txt = |records: &[&str]| {
            parse_txt(&records.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        let id = |s: &str| Discovery::Id(s.into());
        assert_eq!(txt(&[]), Discovery::Absent);
        assert_eq!(txt(&["v=spf1 -all"]), Discovery::Absent);
        assert_eq!(txt(&["v=STSv10; id=1"]), Discovery::Absent);
        assert_eq!(
            txt(&["v=STSv1; id=20160831085700Z;"]),
            id("20160831085700Z")
        );
        assert_eq!(txt(&["v=STSv1;id=abc"]), id("abc"));
        assert_eq!(txt(&["v=STSv1 ; id=abc ; ext=1"]), id("abc"));
        assert_eq!(txt(&["v=spf1 -all", "v=STSv1; id=x1;"]), id("x1"));
        assert!(matches!(
            txt(&["v=STSv1; id=1", "v=STSv1; id=2"]),
            Discovery::Invalid(_)
        ));
        for bad in [
            "v=STSv1",
            "v=STSv1;",
            "v=STSv1; id=",
            "v=STSv1; id=has-dash",
            "v=STSv1; id=123456789012345678901234567890123",
            "v=STSv1; noequals",
        ] {
            assert!(matches!(txt(&[bad]), Discovery::Invalid(_)), "{bad:?}");
        }
    }

    #[test]
    fn the_cache_is_used_and_refreshed_as_rfc_8461_5_1_says() {
        let cached = Cached {
            id: "1".into(),
            policy: parse_policy(ENFORCE.as_bytes()).unwrap(),
            fetched: 1_000,
            body: ENFORCE.into(),
        };
        let expires = 1_000 + 604_800;
        let id = |s: &str| Discovery::Id(s.into());
        let fetch = |s: &str| Next::Fetch { id: s.into() };
        for (cache, found, now, want) in [
            // No cache: fetch when there is a record.
            (None, id("1"), 2_000, fetch("1")),
            (None, Discovery::Absent, 2_000, Next::NoPolicy),
            (
                None,
                Discovery::Failed("timeout".into()),
                2_000,
                Next::NoPolicy,
            ),
            // Same id: the cache, until it is a day old.
            (Some(&cached), id("1"), 2_000, Next::UseCached),
            (Some(&cached), id("1"), 1_000 + REFRESH_AFTER, fetch("1")),
            // A changed id: fetch.
            (Some(&cached), id("2"), 2_000, fetch("2")),
            // The record gone, invalid, or the lookup failed: the cache stands.
            (Some(&cached), Discovery::Absent, 2_000, Next::UseCached),
            (
                Some(&cached),
                Discovery::Invalid("x".into()),
                2_000,
                Next::UseCached,
            ),
            (
                Some(&cached),
                Discovery::Failed("x".into()),
                2_000,
                Next::UseCached,
            ),
            // Expired: as if there were no cache.
            (Some(&cached), id("1"), expires, fetch("1")),
            (Some(&cached), Discovery::Absent, expires, Next::NoPolicy),
        ] {
            assert_eq!(next_step(cache, &found, now), want, "{found:?} at {now}");
        }
        assert!(cached.is_valid(expires - 1));
        assert!(!cached.is_valid(expires));
    }

    #[test]
    fn sessions_are_judged_in_rfc_8460_terms() {
        let verified = CertVerdict::Verified;
        let pinned = CertVerdict::KeyKnown("pinned key");
        let untrusted = |why: &str| CertVerdict::Untrusted(why.into());
        let (mismatch, expired, issuer, selfsigned, first) = (
            untrusted("name mismatch"),
            untrusted("expired"),
            untrusted("untrusted issuer"),
            untrusted("self-signed"),
            untrusted("first contact"),
        );
        for (seen, want) in [
            (TlsSeen::NotReached, None),
            (TlsSeen::Established(Some(&verified)), Some(Ok(()))),
            (TlsSeen::Established(Some(&pinned)), Some(Ok(()))),
            (
                TlsSeen::NoStartTls,
                Some(Err(TlsFailure::StarttlsNotSupported)),
            ),
            (
                TlsSeen::HandshakeFailed,
                Some(Err(TlsFailure::ValidationFailure)),
            ),
            (
                TlsSeen::Established(Some(&mismatch)),
                Some(Err(TlsFailure::CertificateHostMismatch)),
            ),
            (
                TlsSeen::Established(Some(&expired)),
                Some(Err(TlsFailure::CertificateExpired)),
            ),
            (
                TlsSeen::Established(Some(&issuer)),
                Some(Err(TlsFailure::CertificateNotTrusted)),
            ),
            (
                TlsSeen::Established(Some(&selfsigned)),
                Some(Err(TlsFailure::CertificateNotTrusted)),
            ),
            (
                TlsSeen::Established(Some(&first)),
                Some(Err(TlsFailure::ValidationFailure)),
            ),
            (
                TlsSeen::Established(None),
                Some(Err(TlsFailure::ValidationFailure)),
            ),
        ] {
            let got = judge_session(seen).map(|r| r.map_err(|(kind, _)| kind));
            assert_eq!(got, want, "{seen:?}");
        }
        assert_eq!(
            TlsFailure::StarttlsNotSupported.as_str(),
            "starttls-not-supported"
        );
        assert_eq!(
            TlsFailure::CertificateHostMismatch.as_str(),
            "certificate-host-mismatch"
        );
    }
}
