//! The client side of XPONY in outbound delivery: what is known about an
//! MX host's key before connecting (DNS key records, the pin), the
//! judgement of the key the server presents against that evidence
//! (proto-spec §8.3), the verdict the log shows, and the pin kept after a
//! session (§8.4).

use std::net::IpAddr;

use super::dns::{Dnssec, MailResolver};
use super::policy::{SecurityLevel, TlsPolicy};
use crate::log;
use crate::pony::keys::PublicKey;
use crate::pony::negotiation::ServerHints;
use crate::pony::pins::{DnsKeys, Evidence, KeyVerdict};
use crate::smtp::client::HostFailure;
use crate::smtp::envelope::address_literal;
use crate::transport::CertVerdict;

/// What the client side of the blackpony extension needs.
#[derive(Debug, Clone)]
pub struct PonyClient {
    pub key: crate::pony::noise::Keypair,
    pub pins: crate::pony::pins::PinStore,
}

/// What is known about one MX host's blackpony key, and what happened.
#[derive(Debug, Clone, Default)]
pub(crate) struct PonyContext {
    pub(super) dns: crate::pony::pins::DnsKeys,
    /// Keys published for testing (`t=y`): never enforced, only compared.
    pub(super) testing: Vec<crate::pony::keys::PublicKey>,
    pub(super) pin: Option<crate::pony::pins::Pin>,
    /// The host has a pin or a DNS key: it must offer XPONY.
    pub(super) required: bool,
    /// The key the server presented, why it was accepted, its hints.
    pub(super) seen: Option<(
        crate::pony::keys::PublicKey,
        crate::pony::pins::Basis,
        crate::pony::negotiation::ServerHints,
    )>,
    /// The key the server presented, accepted or not (`blackpony probe`).
    pub(super) presented: Option<crate::pony::keys::PublicKey>,
}

impl PonyClient {
    /// Looks up what is known about `host` (DNS key, pin) before connecting
    /// (proto-spec §8.3 "before the session"): `None` when the extension is
    /// not to be used with it, `Err` when the host must not be tried now (a
    /// DNSSEC-bogus key record).
    ///
    /// Policy `none` means no encryption of any kind for the destination.
    /// Under `verify` a first contact could only reach `encrypted`, so the
    /// extension is used only for hosts with a pin or a DNS key, and other
    /// hosts must show a verified certificate (proto-spec §9).
    pub(super) async fn context(
        &self,
        resolver: &MailResolver,
        host: &str,
        mx: Dnssec,
        policy: TlsPolicy,
    ) -> Result<Option<PonyContext>, HostFailure> {
        if policy == TlsPolicy::None {
            return Ok(None);
        }
        let name = crate::pony::keys::dns_name(host);
        let mut testing = Vec::new();
        // An address literal has no name to publish a key under (§8.2):
        // only a pin can be known about it.
        let txt = if address_literal(host).is_some() {
            Ok((Vec::new(), Dnssec::Insecure))
        } else {
            resolver.txt(&name).await
        };
        let dns = match txt {
            Ok((_, Dnssec::Bogus)) => {
                let why = format!("the DNSSEC validation of {name} failed (bogus answer)");
                log!("xpony: {host}: {why}");
                return Err(HostFailure::PonyRejected { why });
            }
            // A key counts as DNSSEC-signed only if the MX record that
            // named its host was signed too (as for DANE, RFC 7672 §2.2.1).
            Ok((records, status)) => {
                testing = note_dns_records(&name, &records);
                DnsKeys::from_records(&records, status == Dnssec::Secure && mx == Dnssec::Secure)
            }
            Err(e) => {
                log!("warning: XPONY key lookup for {host}: {e}");
                DnsKeys::Indeterminate
            }
        };
        let now = unix_now();
        let (pin, pins_unreadable) = match self.pins.get(host) {
            Ok(pin) => (pin.filter(|p| !p.expired(now)), false),
            Err(e) => {
                // Unreadable pins must not mean "no pin": require XPONY.
                log!("warning: {e}; requiring XPONY from {host}");
                (None, true)
            }
        };
        let required = Evidence {
            dns: &dns,
            pin: pin.as_ref(),
        }
        .requires_extension()
            || pins_unreadable;
        // The same for DANE: a first contact would not be authenticated.
        if policy.required() == SecurityLevel::Authenticated && !required {
            return Ok(None);
        }
        Ok(Some(PonyContext {
            dns,
            testing,
            pin,
            required,
            seen: None,
            presented: None,
        }))
    }

    /// After a session that got as far as a transaction over the channel,
    /// remembers the key (first contact) or refreshes the pin (§8.4).
    ///
    /// A pin that cannot be stored (a state directory the mailer's user may
    /// not write) does not defer: the session was encrypted all the same,
    /// only the next contact will not recognise the key. It is logged
    /// loudly, and the verdict says `pin=not-stored`, never "pinned now".
    pub(super) fn update_pin(
        &self,
        context: &PonyContext,
        host: &str,
        ip: IpAddr,
        verdict: &mut Option<CertVerdict>,
    ) {
        let Some((key, basis, hints)) = &context.seen else {
            return;
        };
        let updated = crate::pony::pins::updated_pin(
            context.pin.as_ref(),
            key,
            *basis,
            hints,
            &context.dns,
            unix_now(),
        );
        let result = match updated {
            Some(pin) => self.pins.put(host, &pin),
            // The server asks not to be pinned (any more).
            None => self.pins.forget(host).map(|_| ()),
        };
        let first_contact =
            matches!(verdict, Some(CertVerdict::Untrusted(why)) if why == FIRST_CONTACT);
        match result {
            Ok(()) if first_contact => {
                *verdict = Some(CertVerdict::Untrusted(format!(
                    "{FIRST_CONTACT}, key pinned now"
                )));
            }
            Ok(()) => {}
            Err(e) => {
                log!(
                    "warning: xpony: {host}[{ip}] pin=not-stored error=\"{e}\" (delivering anyway: the session is encrypted; the state directory must be writable by the user blackpony runs as, or this key is not recognised next time)"
                );
                if first_contact {
                    *verdict = Some(CertVerdict::Untrusted(format!(
                        "{FIRST_CONTACT}, pin=not-stored"
                    )));
                }
            }
        }
    }
}

/// Judges the key `host` presented (XPONY message 2) against what is known
/// about it (proto-spec §8.3) and under `policy`: `Err` says why it is
/// refused (logged); accepted, it is kept in `context` for the verdict and
/// the pin.
pub(super) fn judge_server_key(
    mut context: Option<&mut PonyContext>,
    host: &str,
    ip: IpAddr,
    key: PublicKey,
    hints: ServerHints,
    policy: TlsPolicy,
) -> Result<(), String> {
    if let Some(c) = context.as_deref_mut() {
        c.presented = Some(key);
    }
    let no_evidence = (DnsKeys::Absent, None);
    let (dns, pin) = match context.as_deref() {
        Some(c) => (&c.dns, c.pin.as_ref()),
        None => (&no_evidence.0, no_evidence.1),
    };
    match (Evidence { dns, pin }).judge_key(&key) {
        KeyVerdict::Mismatch { expected } => {
            let why = format!(
                "{host}[{ip}] presented key {}, expected {expected}: impostor, or a key change to accept with 'blackpony pins accept {host} KEY'",
                crate::pony::keys::fingerprint(&key),
            );
            log!("xpony: {why}");
            Err(why)
        }
        KeyVerdict::Accepted(basis)
            if policy.required() == SecurityLevel::Authenticated && !basis.authenticated() =>
        {
            let why = format!(
                "{host}[{ip}] presented key {} on first contact, but policy {} needs a known key or a verified certificate",
                crate::pony::keys::fingerprint(&key),
                policy.as_str(),
            );
            log!("xpony: {why}");
            Err(why)
        }
        KeyVerdict::Accepted(basis) => {
            if let Some(c) = context.as_deref()
                && !c.testing.is_empty()
                && !c.testing.contains(&key)
            {
                // proto-spec §8.2: what the operator is testing
                // would have failed.
                log!(
                    "xpony: {host}[{ip}] presented key {}, not the testing key published in DNS (t=y, not enforced)",
                    crate::pony::keys::fingerprint(&key)
                );
            }
            if let Some(c) = context {
                c.seen = Some((key, basis, hints));
            }
            Ok(())
        }
    }
}

/// What the log says of a session that switched to the XPONY channel.
pub(super) fn channel_verdict(context: Option<&PonyContext>) -> CertVerdict {
    match context.and_then(|c| c.seen.as_ref()) {
        Some((_, basis, _)) if basis.authenticated() => CertVerdict::KeyKnown(basis.as_str()),
        Some((_, _, hints)) if hints.max_age == 0 => {
            CertVerdict::Untrusted("first contact, the server asks not to be pinned".into())
        }
        _ if context.map(|c| &c.dns) == Some(&DnsKeys::Indeterminate) => {
            CertVerdict::Untrusted("first contact, not pinned: the DNS key lookup failed".into())
        }
        // Said "pinned now" only once the pin is stored (update_pin).
        _ => CertVerdict::Untrusted(FIRST_CONTACT.into()),
    }
}

/// The verdict of an XPONY first contact before its pin is stored.
const FIRST_CONTACT: &str = "first contact";

/// Logs the XPONY records at `name` that are invalid (they are ignored, and
/// the operator who published them should know: proto-spec §8.2), and
/// returns the testing keys.
fn note_dns_records(name: &str, records: &[String]) -> Vec<crate::pony::keys::PublicKey> {
    use crate::pony::keys::{DnsRecord, parse_dns_record};
    let mut testing = Vec::new();
    for record in records {
        match parse_dns_record(record) {
            DnsRecord::Invalid(why) => {
                log!("warning: {name}: invalid XPONY key record ignored ({why}): {record:?}")
            }
            DnsRecord::Key { key, testing: true } => testing.push(key),
            _ => {}
        }
    }
    testing
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
