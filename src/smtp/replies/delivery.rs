//! A sending client's own results, and the outbound transport's: what the
//! MTA is told for a recipient when no remote reply stands for it.

use std::fmt::Display;

use crate::smtp::Reply;

// ---------------------------------------------------------------------------
// A sending client's own results, reported to the MTA (or the fetch journal)
// as if a server had said them.

/// `451 4.4.2`: LMTP, the connection broke before every recipient had its
/// reply: the message may have been delivered (RFC 1047; RFC 3463 X.4.2).
pub fn lost_after_message() -> Reply {
    Reply::new(
        451,
        "4.4.2 connection lost after the message (delivery uncertain)",
    )
}

/// `451 4.4.0`: a recipient the server accepted got no reply after the
/// message (RFC 2033 §4.2 owes one each).
pub fn no_reply_after_message() -> Reply {
    Reply::new(451, "4.4.0 no reply after the message")
}

/// `451 4.4.0`: a recipient that got no reply to its RCPT TO.
pub fn no_reply_to_rcpt() -> Reply {
    Reply::new(451, "4.4.0 no reply to RCPT TO")
}

/// `552 5.3.4`: the message is over the receiving server's SIZE (RFC 1870
/// §6), so it is not sent.
pub fn too_big_for_remote(limit: u64) -> Reply {
    Reply::new(
        552,
        format!("5.3.4 Message size exceeds fixed limit of the receiving server ({limit} octets)"),
    )
}

/// `553 5.6.7`: non-ASCII addresses and no SMTPUTF8 at the receiving server
/// (RFC 6531 §3.4, RFC 6533 X.6.7).
pub fn needs_smtputf8() -> Reply {
    Reply::new(
        553,
        "5.6.7 Non-ASCII address and the receiving server does not offer SMTPUTF8",
    )
}

/// `554 5.6.0`: the message to send contains NUL (RFC 5322 §3.5), so it is
/// not sent (RFC 5321 §4.2.3 554 transaction failed).
pub fn nul_not_sent() -> Reply {
    Reply::new(554, "5.6.0 Message contains NUL characters")
}

// ---------------------------------------------------------------------------
// The outbound transport's own results: what it reports to the MTA for a
// recipient when no remote reply stands for it (RFC 3463 X.4.x network and
// routing, X.7.x security; texts as Postfix's smtp client words them).

/// `451 4.4.7`: the delivery's own deadline passed
/// (RFC 3463 X.4.7 delivery time expired); the MTA keeps the message.
pub fn delivery_time_limit() -> Reply {
    Reply::new(
        451,
        "4.4.7 Delivery time limit exceeded; the MTA will retry",
    )
}

/// `451 4.4.4`: no MX host could be tried (RFC 3463 X.4.4 unable to route).
pub fn no_usable_mx(domain: &str) -> Reply {
    Reply::new(451, format!("4.4.4 No usable mail exchanger for {domain}"))
}

/// `556 5.1.10`: the domain publishes a null MX (RFC 7505 §3, §4.2).
pub fn null_mx(domain: &str) -> Reply {
    Reply::new(
        556,
        format!("5.1.10 Domain {domain} does not accept mail (null MX, RFC 7505)"),
    )
}

/// `550 5.1.2`: the destination domain does not exist (RFC 3463 X.1.2).
pub fn no_such_domain(name: &str) -> Reply {
    Reply::new(
        550,
        format!("5.1.2 Host or domain name not found: {name} does not exist"),
    )
}

/// `550 5.1.2`: the destination has neither MX nor address records.
pub fn domain_has_no_address(name: &str) -> Reply {
    Reply::new(
        550,
        format!("5.1.2 Host or domain name not found: {name} has no address"),
    )
}

/// `501 5.1.2`: a destination domain that is not a DNS name.
pub fn bad_destination_domain(name: &str) -> Reply {
    Reply::new(501, format!("5.1.2 Bad destination domain name {name:?}"))
}

/// `451 4.4.3`: a DNS lookup failed for now (RFC 3463 X.4.3 directory
/// server failure).
pub fn dns_lookup_failed(name: &str, why: impl Display) -> Reply {
    Reply::new(
        451,
        format!("4.4.3 Host or domain name lookup failed for {name}: {why}"),
    )
}

/// `451 4.4.3`: a listed MX host's addresses could not be looked up (the
/// walk goes on; this stands if no host is left).
pub fn mx_lookup_failed(failure: impl Display) -> Reply {
    Reply::new(451, format!("4.4.3 {failure}"))
}

/// `550 5.7.1`: `refuse_address_literals` (RFC 5321 §4.1.3 literals are
/// allowed by the protocol, refused by local policy; RFC 3463 X.7.1).
pub fn address_literal_refused(name: &str) -> Reply {
    Reply::new(
        550,
        format!(
            "5.7.1 Delivery to address literal {name} refused by local policy (refuse_address_literals)"
        ),
    )
}

/// `451 4.4.1`: no connection to an MX host (RFC 3463 X.4.1 no answer).
pub fn connect_failed(host: &str, ip: impl Display, port: u16, why: impl Display) -> Reply {
    Reply::new(451, format!("4.4.1 Connect to {host}[{ip}]:{port}: {why}"))
}

/// `451 4.5.0`: the host's replies are not SMTP (RFC 3463 X.5.0).
pub fn not_smtp(host: &str, ip: impl Display, why: impl Display) -> Reply {
    Reply::new(
        451,
        format!("4.5.0 {host}[{ip}] does not speak SMTP: {why}"),
    )
}

/// `454 4.7.5`: the TLS handshake failed (RFC 3207 §4 454; RFC 3463 X.7.5
/// cryptographic failure).
pub fn tls_handshake_failed(host: &str, ip: impl Display, why: impl Display) -> Reply {
    Reply::new(
        454,
        format!("4.7.5 TLS handshake with {host}[{ip}] failed: {why}"),
    )
}

/// `454 4.7.5`: the certificate does not match the host's TLSA records
/// (RFC 7672 §2.2: no plaintext after that).
pub fn dane_mismatch(host: &str, ip: impl Display, why: impl Display) -> Reply {
    Reply::new(
        454,
        format!(
            "4.7.5 Server certificate of {host}[{ip}] does not match its TLSA records (DANE): {why}"
        ),
    )
}

/// `454 4.7.5`: policy `verify` and a certificate that does not verify.
pub fn certificate_not_verified(host: &str, why: impl Display) -> Reply {
    Reply::new(
        454,
        format!("4.7.5 Server certificate of {host} not verified: {why}"),
    )
}

/// `451 4.7.5`: DANE refuses the host (RFC 7672 §2.2, unusable or bogus
/// TLSA records).
pub fn dane_refused(host: &str, why: impl Display) -> Reply {
    Reply::new(451, format!("4.7.5 {host}: DANE: {why}"))
}

/// `451 4.7.4`: TLS is required (`required_by`: a policy, or DANE) and the
/// host refused or did not offer STARTTLS (`what`), RFC 3463 X.7.4
/// security features not supported.
pub fn tls_required(required_by: &str, host: &str, ip: impl Display, what: &str) -> Reply {
    Reply::new(
        451,
        format!("4.7.4 TLS is required by {required_by} but {host}[{ip}] {what}"),
    )
}

/// `451 4.7.5`: an enforced MTA-STS policy lists none of the domain's MX
/// hosts (RFC 8461 §4.1).
pub fn sts_lists_no_mx(domain: &str, id: &str, hosts: &str, allowed: &str) -> Reply {
    Reply::new(
        451,
        format!(
            "4.7.5 MTA-STS policy of {domain} (mode enforce, id {id}) lists none of its MX hosts ({hosts}; the policy allows {allowed})"
        ),
    )
}

/// `451 4.7.5`: a host with a pinned or published XPONY key did not offer
/// XPONY (proto-spec xpony.md §7, a downgrade).
pub fn xpony_downgrade(host: &str, ip: impl Display) -> Reply {
    Reply::new(
        451,
        format!(
            "4.7.5 {host}[{ip}] is known to speak XPONY (pin or DNS key) but did not offer it: a downgrade? 'blackpony pins forget {host}' if this is intended"
        ),
    )
}

/// `451 4.7.5`: the host's XPONY key is not the one pinned or published.
pub fn xpony_key_refused(why: impl Display) -> Reply {
    Reply::new(451, format!("4.7.5 XPONY key refused: {why}"))
}

/// `451 4.7.5`: the XPONY handshake with the host failed.
pub fn xpony_failed(host: &str, ip: impl Display, why: impl Display) -> Reply {
    Reply::new(
        451,
        format!("4.7.5 XPONY handshake with {host}[{ip}] failed: {why}"),
    )
}

/// `451 4.4.2`: the connection broke while a reply was awaited (`stage`:
/// the command, or "end of data").
pub fn lost_waiting_for(host: &str, ip: impl Display, stage: &str) -> Reply {
    Reply::new(
        451,
        format!("4.4.2 Lost connection with {host}[{ip}] while waiting for the reply to {stage}"),
    )
}

/// `451 4.4.2`: the connection broke after the end of data was sent and
/// before its reply: the message may have been delivered (RFC 1047).
pub fn lost_after_end_of_data(host: &str, ip: impl Display) -> Reply {
    Reply::new(
        451,
        format!(
            "4.4.2 Lost connection with {host}[{ip}] after end of data; the message may already be delivered"
        ),
    )
}

/// `451 4.4.2`: the connection broke before this recipient's message was
/// sent.
pub fn lost_during_transaction(host: &str, ip: impl Display) -> Reply {
    Reply::new(
        451,
        format!("4.4.2 Lost connection with {host}[{ip}] during the transaction"),
    )
}

/// `451 4.4.2`: the SMTP proxy's remote session is gone and cannot take the
/// MTA's command.
pub fn lost_connection(host: &str, ip: impl Display) -> Reply {
    Reply::new(451, format!("4.4.2 Lost connection with {host}[{ip}]"))
}

/// `451 4.3.0`: the SMTP proxy has no remote session for the MTA's command
/// (it could not be opened or kept).
pub fn lost_remote_session() -> Reply {
    Reply::new(451, "4.3.0 Error: lost the remote session")
}

// ---------------------------------------------------------------------------
// `blackpony fetch`'s local delivery results, journaled per recipient as a
// reply (250: delivered, 4xx: tried again next run).

/// `250 2.0.0`: written into the Maildir as `name` (RFC 5321 §4.2.2 250).
pub fn maildir_delivered(name: &str) -> Reply {
    Reply::new(250, format!("2.0.0 {name}"))
}

/// `451 4.3.0`: the Maildir target could not be opened.
pub fn maildir_not_open() -> Reply {
    Reply::new(451, "4.3.0 Maildir not open")
}

/// `451 4.3.0`: the local store failed (`why`: the I/O error).
pub fn local_store_failed(why: impl Display) -> Reply {
    Reply::new(451, format!("4.3.0 {why}"))
}

/// `451 4.3.0`: an MTA delivery asked of a target that is a Maildir.
pub fn not_an_mta() -> Reply {
    Reply::new(451, "4.3.0 not an MTA")
}

/// `451 4.4.1`: no connection to the local MTA (RFC 3463 X.4.1).
pub fn local_connect_failed(target: impl Display, why: impl Display) -> Reply {
    Reply::new(451, format!("4.4.1 Connect to {target}: {why}"))
}

/// `451 4.4.2`: the session with the local MTA failed before any recipient
/// had its reply (`why`: the failure, or the I/O error).
pub fn local_delivery_failed(why: impl Display) -> Reply {
    Reply::new(451, format!("4.4.2 local delivery failed: {why}"))
}
