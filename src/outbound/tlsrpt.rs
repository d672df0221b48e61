//! SMTP TLS Reporting (RFC 8460): what delivery records about each MX
//! session's TLS, and the daily aggregate report built from it.
//!
//! - Delivery hands [`TlsReports`] (an [`OutcomeSink`]) one
//!   [`PolicyOutcome`] per session whose TLS outcome is known (a success,
//!   or a failure named by RFC 8460 §4.3).
//!   Records go to the state store ([`crate::state::daily`]), one line per
//!   session, per policy domain and UTC day, safe with one `deliver`
//!   process per message.
//! - [`Report::build`] aggregates one day of one domain into the JSON of
//!   RFC 8460 §4.4; [`parse_policy_record`] reads `_smtp._tls.<domain>`
//!   (§3); [`report_message`] makes the §5.3 mail with the gzipped report.
//!
//! Everything here but [`TlsReports`]'s file access is pure.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::outcome::{OutcomeSink, PolicyOutcome, PolicyType, TlsFailure};
use crate::log;
use crate::smtp::envelope::{address_is_sane, domain_of};
use crate::state::daily::DailyRecords;
use crate::transport::CertVerdict;

const SUCCESS: &str = "success";

/// One session, as stored (one JSON line): a [`PolicyOutcome`] with its
/// time, in the report's own words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Unix time of the session.
    pub t: u64,
    #[serde(rename = "policy-type")]
    pub policy_type: String,
    #[serde(
        rename = "policy-string",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub policy_string: Vec<String>,
    /// `success`, or the §4.3 result type.
    pub result: String,
    #[serde(
        rename = "sending-mta-ip",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sending_mta_ip: Option<IpAddr>,
    #[serde(rename = "receiving-mx-hostname")]
    pub receiving_mx_hostname: String,
    #[serde(
        rename = "receiving-ip",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub receiving_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl SessionRecord {
    pub fn of(outcome: &PolicyOutcome, t: u64) -> Self {
        SessionRecord {
            t,
            policy_type: outcome.policy.as_str().to_string(),
            policy_string: outcome.policy_strings.clone(),
            result: match outcome.result {
                Ok(()) => SUCCESS.to_string(),
                Err(failure) => failure.as_str().to_string(),
            },
            sending_mta_ip: outcome.sending_ip,
            receiving_mx_hostname: outcome.mx_host.trim_end_matches('.').to_ascii_lowercase(),
            receiving_ip: outcome.receiving_ip,
            reason: outcome.detail.clone(),
        }
    }
}

/// Where delivery records sessions: `<state_dir>/tlsrpt/<domain>/<day>`.
/// Without a state directory nothing is recorded.
#[derive(Debug, Clone, Default)]
pub struct TlsReports {
    store: Option<DailyRecords>,
}

impl TlsReports {
    pub fn new(state_dir: Option<&Path>) -> Self {
        TlsReports {
            store: state_dir.map(|d| DailyRecords::new(&d.join("tlsrpt"))),
        }
    }

    /// The sessions recorded for `domain` on `day`; lines that do not parse
    /// (a torn write) are skipped and counted.
    pub fn read_day(
        &self,
        domain: &str,
        day: &str,
    ) -> Result<(Vec<SessionRecord>, usize), crate::state::StoreError> {
        let Some(store) = &self.store else {
            return Ok((Vec::new(), 0));
        };
        Ok(parse_records(&store.read(domain, day)?))
    }
}

/// The sessions of a day's lines (each a JSON [`SessionRecord`]); lines
/// that do not parse (a torn write) are skipped and counted.
pub fn parse_records(lines: &[String]) -> (Vec<SessionRecord>, usize) {
    let mut skipped = 0;
    let records = lines
        .iter()
        .filter_map(|l| match serde_json::from_str(l) {
            Ok(r) => Some(r),
            Err(_) => {
                skipped += 1;
                None
            }
        })
        .collect();
    (records, skipped)
}

impl OutcomeSink for TlsReports {
    /// Records one session under its policy domain. A record that cannot
    /// be written is logged and dropped: statistics never hold up mail.
    fn record(&self, outcome: &PolicyOutcome) {
        let Some(store) = &self.store else {
            return;
        };
        let record = SessionRecord::of(outcome, unix_now());
        let domain = outcome.domain.trim_end_matches('.').to_ascii_lowercase();
        let written = serde_json::to_string(&record)
            .map_err(|e| e.to_string())
            .and_then(|line| {
                store
                    .append(&domain, &day_of(record.t), &line)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            log!(
                "warning: tlsrpt: {domain}: session not recorded error=\"{e}\" (the state directory must be writable by the user blackpony runs as)"
            );
        }
    }
}

/// How the session's TLS turned out against the local policy, when there
/// is something to report (`None`: nothing about TLS is known, e.g. the
/// connection failed, or policy `none` said not to try).
///
/// - `tried_tls`: the session was to use STARTTLS (not policy `none`, not
///   the plaintext retry after a failed handshake);
/// - `encrypted`: TLS or XPONY came up; `verdict`: the certificate's;
/// - `verify`: the policy required a verified certificate;
/// - `tls_failed`: the handshake itself failed (its error in `handshake`);
/// - `starttls_missing`: policy required TLS and it was not offered;
/// - `transacted`: the session reached the mail transaction (so a plaintext
///   session under `may` is a session without STARTTLS).
#[derive(Debug, Clone, Default)]
pub struct SessionFacts<'a> {
    pub tried_tls: bool,
    pub encrypted: bool,
    pub verdict: Option<&'a CertVerdict>,
    pub verify: bool,
    pub tls_failed: bool,
    pub handshake: Option<String>,
    pub starttls_missing: bool,
    pub transacted: bool,
}

/// A session's result for the report, and our words for a failure.
pub type Judged = (Result<(), TlsFailure>, Option<String>);

impl SessionFacts<'_> {
    pub fn result(&self) -> Option<Judged> {
        if !self.tried_tls {
            return None;
        }
        let failure = |f, why: &str| Some((Err(f), Some(why.to_string())));
        if self.encrypted {
            return match self.verdict {
                Some(CertVerdict::Untrusted(why)) if self.verify => {
                    failure(TlsFailure::of_certificate(why), why)
                }
                // Opportunistic TLS (RFC 7435) or a verified peer: the
                // session met its policy.
                _ => Some((Ok(()), None)),
            };
        }
        if self.tls_failed {
            return failure(
                TlsFailure::ValidationFailure,
                self.handshake.as_deref().unwrap_or("TLS handshake failed"),
            );
        }
        if self.starttls_missing || self.transacted {
            return failure(TlsFailure::StarttlsNotSupported, "STARTTLS not offered");
        }
        None
    }
}

// --------------------------------------------------------------------------
// Dates (UTC days, `YYYY-MM-DD`)
// --------------------------------------------------------------------------

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The UTC day of a Unix time.
pub fn day_of(unix: u64) -> String {
    let stamp = log::timestamp_utc(UNIX_EPOCH + Duration::from_secs(unix));
    stamp[..10].to_string()
}

/// The Unix time of a day's midnight (UTC), from `YYYY-MM-DD`.
pub fn parse_day(day: &str) -> Option<u64> {
    let b = day.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |s: &str| s.parse::<u32>().ok();
    let (y, m, d) = (num(&day[..4])?, num(&day[5..7])?, num(&day[8..])?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || d < 1 {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if d > month_days[(m - 1) as usize] {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let (y, m, d) = (i64::from(y), i64::from(m), i64::from(d));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400).ok()
}

/// Yesterday (UTC): the day a daily report is normally made for.
pub fn yesterday() -> String {
    day_of(unix_now().saturating_sub(86_400))
}

// --------------------------------------------------------------------------
// The report (RFC 8460 §4.4)
// --------------------------------------------------------------------------

/// Who makes the report.
#[derive(Debug, Clone)]
pub struct Reporter {
    /// `organization-name`.
    pub organization: String,
    /// `contact-info`: an address to reach the reporter.
    pub contact: String,
    /// The submitting host's domain (`TLS-Report-Submitter`, file name).
    pub submitter: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    pub organization_name: String,
    pub date_range: DateRange,
    pub contact_info: String,
    pub report_id: String,
    pub policies: Vec<PolicyReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DateRange {
    pub start_datetime: String,
    pub end_datetime: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyReport {
    pub policy: PolicyDescription,
    pub summary: Summary,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failure_details: Vec<FailureDetail>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyDescription {
    pub policy_type: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policy_string: Vec<String>,
    pub policy_domain: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mx_host: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Summary {
    pub total_successful_session_count: u64,
    pub total_failure_session_count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct FailureDetail {
    pub result_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sending_mta_ip: Option<IpAddr>,
    pub receiving_mx_hostname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receiving_ip: Option<IpAddr>,
    pub failed_session_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason_code: Option<String>,
}

/// What failure details are grouped by.
type FailureKey = (
    &'static str,
    Option<IpAddr>,
    String,
    Option<IpAddr>,
    Option<String>,
);

impl Report {
    /// The report for `domain` on `day` (`YYYY-MM-DD`) from its sessions.
    /// Records of other days, or of unknown result types, are left out.
    pub fn build(
        reporter: &Reporter,
        domain: &str,
        day: &str,
        records: &[SessionRecord],
    ) -> Option<Report> {
        let start = parse_day(day)?;
        let end = start + 86_399;
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        // Policies by (type, policy-string): successes and failures.
        type PolicyKey = (&'static str, Vec<String>);
        let mut by_policy: BTreeMap<PolicyKey, (u64, BTreeMap<FailureKey, u64>)> = BTreeMap::new();
        for r in records.iter().filter(|r| (start..=end).contains(&r.t)) {
            // Names this version does not know are left out.
            let Some(policy) = PolicyType::from_name(&r.policy_type) else {
                continue;
            };
            let result = match r.result.as_str() {
                SUCCESS => None,
                name => match TlsFailure::from_name(name) {
                    Some(f) => Some(f),
                    None => continue,
                },
            };
            let entry = by_policy
                .entry((policy.as_str(), r.policy_string.clone()))
                .or_default();
            let Some(failure) = result else {
                entry.0 += 1;
                continue;
            };
            let key = (
                failure.as_str(),
                r.sending_mta_ip,
                r.receiving_mx_hostname.clone(),
                r.receiving_ip,
                r.reason.clone(),
            );
            *entry.1.entry(key).or_default() += 1;
        }
        let policies = by_policy
            .into_iter()
            .map(
                |((policy_type, policy_string), (successes, failures))| PolicyReport {
                    policy: PolicyDescription {
                        policy_type,
                        // An STS policy's `mx:` patterns (RFC 8461 §3.2).
                        mx_host: if policy_type == PolicyType::Sts.as_str() {
                            policy_string
                                .iter()
                                .filter_map(|l| l.strip_prefix("mx:"))
                                .map(|p| p.trim().to_string())
                                .collect()
                        } else {
                            Vec::new()
                        },
                        policy_string,
                        policy_domain: domain.clone(),
                    },
                    summary: Summary {
                        total_successful_session_count: successes,
                        total_failure_session_count: failures.values().sum(),
                    },
                    failure_details: failures
                        .into_iter()
                        .map(
                            |((result_type, sending, mx, receiving, reason), n)| FailureDetail {
                                result_type,
                                sending_mta_ip: sending,
                                receiving_mx_hostname: mx,
                                receiving_ip: receiving,
                                failed_session_count: n,
                                failure_reason_code: reason,
                            },
                        )
                        .collect(),
                },
            )
            .collect();
        let start_datetime = log::timestamp_utc(UNIX_EPOCH + Duration::from_secs(start));
        Some(Report {
            organization_name: reporter.organization.clone(),
            report_id: format!("{start_datetime}_{domain}"),
            date_range: DateRange {
                start_datetime,
                end_datetime: log::timestamp_utc(UNIX_EPOCH + Duration::from_secs(end)),
            },
            contact_info: reporter.contact.clone(),
            policies,
        })
    }

    /// Whether any session was recorded.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings and numbers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The policy domain (every policy of one report has the same).
    fn domain(&self) -> &str {
        self.policies
            .first()
            .map_or("", |p| p.policy.policy_domain.as_str())
    }

    /// The file name of §5.1: `submitter!domain!begin!end.json.gz`, the
    /// times in Unix seconds.
    pub fn file_name(&self, reporter: &Reporter, domain: &str) -> String {
        let day = &self.date_range.start_datetime[..10];
        let start = parse_day(day).unwrap_or(0);
        format!(
            "{}!{}!{start}!{}.json.gz",
            reporter.submitter,
            domain.trim_end_matches('.').to_ascii_lowercase(),
            start + 86_399
        )
    }
}

/// gzip of `data` (RFC 1952), for `application/tlsrpt+gzip`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(data);
    encoder.finish().unwrap_or_default()
}

// --------------------------------------------------------------------------
// The reporting policy (RFC 8460 §3) and the report mail (§5.3)
// --------------------------------------------------------------------------

/// Where a domain wants its reports (`rua=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rua {
    /// `mailto:` an address.
    Mailto(String),
    /// `https:` a URL to POST to.
    Https(String),
    /// Any other scheme (ignored, §3: "unknown URI schemes").
    Other(String),
}

/// The name the reporting policy is published at (§3).
pub fn policy_name(domain: &str) -> String {
    format!("_smtp._tls.{}", domain.trim_end_matches('.'))
}

/// The destinations of the one TXT record at `_smtp._tls.<domain>` that
/// starts with `v=TLSRPTv1`. §3: none, or more than one, means the domain
/// does not take reports.
pub fn parse_policy_record(txts: &[String]) -> Result<Vec<Rua>, String> {
    let ours: Vec<&String> = txts
        .iter()
        .filter(|t| {
            let t = t.trim_start();
            t.starts_with("v=TLSRPTv1")
                && t["v=TLSRPTv1".len()..]
                    .trim_start()
                    .is_empty_or_starts_with(';')
        })
        .collect();
    let record = match ours.as_slice() {
        [] => return Err("no TLSRPT record (v=TLSRPTv1)".into()),
        [one] => one.as_str(),
        _ => {
            return Err(format!(
                "{} TLSRPT records, not one (RFC 8460 §3)",
                ours.len()
            ));
        }
    };
    let mut rua = None;
    for field in record.split(';').skip(1) {
        let Some((name, value)) = field.split_once('=') else {
            continue;
        };
        if name.trim() == "rua" {
            rua = Some(value.trim());
        }
    }
    let rua = rua.ok_or("the TLSRPT record has no rua= field")?;
    let list: Vec<Rua> = rua
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .filter_map(|uri| {
            let lower = uri.to_ascii_lowercase();
            if lower.starts_with("mailto:") {
                // RFC 6068: the address, percent-decoded, without ?headers.
                let addr = &uri["mailto:".len()..];
                let addr = percent_decode(addr.split('?').next().unwrap_or(addr));
                // It becomes a RCPT TO and a To: header: one that could not
                // (empty, no domain, or with CR LF, `<>` or white space
                // decoded into it) is no destination.
                let usable = address_is_sane(&addr) && domain_of(&addr).is_some();
                usable.then_some(Rua::Mailto(addr))
            } else if lower.starts_with("https:") {
                Some(Rua::Https(uri.to_string()))
            } else {
                Some(Rua::Other(uri.to_string()))
            }
        })
        .collect();
    if list.is_empty() {
        return Err("the TLSRPT record's rua= names no usable destination".into());
    }
    Ok(list)
}

trait EmptyOrStartsWith {
    fn is_empty_or_starts_with(&self, c: char) -> bool;
}

impl EmptyOrStartsWith for str {
    fn is_empty_or_starts_with(&self, c: char) -> bool {
        self.is_empty() || self.starts_with(c)
    }
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The report mail of RFC 8460 §5.3: `multipart/report;
/// report-type="tlsrpt"`, a short text part, and the gzipped JSON as
/// `application/tlsrpt+gzip` named per §5.1; `TLS-Report-Domain` and
/// `TLS-Report-Submitter` headers. CRLF line ends, lines under 78 octets.
pub fn report_message(
    report: &Report,
    reporter: &Reporter,
    from: &str,
    to: &str,
    now: SystemTime,
) -> Vec<u8> {
    use base64::Engine;
    let domain = report.domain().to_string();
    let file = report.file_name(reporter, &domain);
    let mut random = [0u8; 12];
    let _ = getrandom::fill(&mut random);
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let boundary = format!("tlsrpt-{token}");
    let gz = base64::engine::general_purpose::STANDARD.encode(gzip(report.to_json().as_bytes()));
    let mut m = String::new();
    let mut header = |name: &str, value: &str| m.push_str(&format!("{name}: {value}\r\n"));
    header("From", &format!("<{from}>"));
    header("To", &format!("<{to}>"));
    header(
        "Subject",
        &format!(
            "Report Domain: {domain}\r\n Submitter: {}\r\n Report-ID: <{}>",
            reporter.submitter, report.report_id
        ),
    );
    header("Date", &log::rfc5322_date(now));
    header(
        "Message-ID",
        &format!("<tlsrpt.{token}@{}>", reporter.submitter),
    );
    header("MIME-Version", "1.0");
    header("TLS-Report-Domain", &domain);
    header("TLS-Report-Submitter", &reporter.submitter);
    header(
        "Content-Type",
        &format!("multipart/report; report-type=\"tlsrpt\";\r\n\tboundary=\"{boundary}\""),
    );
    m.push_str("\r\n");
    m.push_str(&format!("--{boundary}\r\n"));
    m.push_str("Content-Type: text/plain; charset=\"us-ascii\"\r\n");
    m.push_str("Content-Transfer-Encoding: 7bit\r\n\r\n");
    m.push_str(&format!(
        "This is an aggregate TLS report (RFC 8460)\r\nfrom {}\r\nfor {domain},\r\n\
         {} to {}.\r\nThe report is attached.\r\n\r\n",
        reporter.submitter, report.date_range.start_datetime, report.date_range.end_datetime
    ));
    m.push_str(&format!("--{boundary}\r\n"));
    m.push_str("Content-Type: application/tlsrpt+gzip\r\n");
    m.push_str("Content-Transfer-Encoding: base64\r\n");
    m.push_str(&format!(
        "Content-Disposition: attachment;\r\n\tfilename=\"{file}\"\r\n\r\n"
    ));
    for chunk in gz.as_bytes().chunks(76) {
        m.push_str(&String::from_utf8_lossy(chunk));
        m.push_str("\r\n");
    }
    m.push_str(&format!("--{boundary}--\r\n"));
    m.into_bytes()
}

#[cfg(test)]
mod tests;
