//! Every reply blackpony writes itself, one named constructor per meaning,
//! shared by every role (the inbound sidecar, the outbound server and
//! transport, the sealed relay and its fetch port).
//!
//! Replies that only pass on what a remote server or the backend said are
//! not here: they are relayed as they came. Each constructor cites where
//! its code (RFC 5321 §4.2) and its enhanced status (RFC 3463, with RFC 4954,
//! RFC 7505 and proto-spec for the later ones) come from. Texts follow
//! Postfix where Postfix has the same refusal, so an operator reading logs
//! of both sees the same words; 421 replies name the host first, as RFC 5321
//! §4.2 and §3.8 show them (`421 <domain> Service not available`).
//!
//! Tests may assert these texts; change a text here and nowhere else.
//!
//! - this file: the dialogue's own replies (positive, syntax and sequence,
//!   envelope and content, closing, XPONY);
//! - [`relay`]: the sealed relay as a receiving MX and its fetch port;
//! - [`delivery`]: a sending client's and the outbound transport's results.

use std::fmt::Display;

use super::Reply;

mod delivery;
mod relay;

pub use delivery::*;
pub use relay::*;

// ---------------------------------------------------------------------------
// Positive replies (RFC 5321 §4.2.2, enhanced codes RFC 3463 §3.1, 2.x.x).

/// `220` greeting (RFC 5321 §4.2, §3.1): the host name first. No enhanced
/// code: ENHANCEDSTATUSCODES is not negotiated before EHLO (RFC 2034 §3).
pub fn greeting(host: &str, protocol: &str) -> Reply {
    Reply::new(220, format!("{host} {protocol} blackpony ready"))
}

/// `250` to HELO (RFC 5321 §4.1.1.1): the server's name, no extensions and
/// no enhanced code (HELO negotiates none).
pub fn helo(host: &str) -> Reply {
    Reply::new(250, host)
}

/// `250 2.0.0 Ok`: NOOP, RSET (RFC 5321 §4.1.1.5, §4.1.1.9).
pub fn ok() -> Reply {
    Reply::new(250, "2.0.0 Ok")
}

/// `221 2.0.0 Bye`: QUIT (RFC 5321 §4.1.1.10).
pub fn bye() -> Reply {
    Reply::new(221, "2.0.0 Bye")
}

/// `250 2.1.0 Ok`: MAIL accepted (RFC 3463 X.1.0, other address status).
pub fn sender_ok() -> Reply {
    Reply::new(250, "2.1.0 Ok")
}

/// `250 2.1.5 Ok`: RCPT accepted (RFC 3463 X.1.5, destination address valid).
pub fn recipient_ok() -> Reply {
    Reply::new(250, "2.1.5 Ok")
}

/// `252`: VRFY answered without verifying (RFC 5321 §3.5.3, §7.3).
pub fn cannot_verify() -> Reply {
    Reply::new(252, "2.0.0 Cannot verify, but will try delivery")
}

/// `354`: send the message (RFC 5321 §4.1.1.4, §4.2.2). An intermediate
/// reply carries no enhanced code (RFC 2034 §3 gives them to 2xx, 4xx, 5xx).
pub fn start_mail_input() -> Reply {
    Reply::new(354, "End data with <CR><LF>.<CR><LF>")
}

/// `220 2.0.0`: STARTTLS accepted (RFC 3207 §4).
pub fn ready_to_start_tls() -> Reply {
    Reply::new(220, "2.0.0 Ready to start TLS")
}

/// `250 2.0.0`: the sealed relay stored a message (RFC 5321 §4.1.1.4).
pub fn sealed_as(id: impl Display) -> Reply {
    Reply::new(250, format!("2.0.0 Ok: sealed as {id}"))
}

/// `250 2.0.0`: LMTP's per-recipient form of [`sealed_as`] (RFC 2033 §4.2).
pub fn sealed_for(recipient: &str, id: impl Display) -> Reply {
    Reply::new(250, format!("2.0.0 <{recipient}> Ok: sealed as {id}"))
}

// ---------------------------------------------------------------------------
// Command syntax and sequence (RFC 5321 §4.2.2, §4.3.2; RFC 3463 X.5.x).

/// `500 5.5.2`: a line that is no command at all (RFC 5321 §4.2.2 "Syntax
/// error, command unrecognized"; RFC 3463 X.5.2 syntax error).
pub fn bad_syntax() -> Reply {
    Reply::new(500, "5.5.2 Error: bad syntax")
}

/// `500 5.5.2`: a command line over 512 octets (RFC 5321 §4.5.3.1.4,
/// §4.2.2 "line too long"; RFC 3463 X.5.2).
pub fn line_too_long() -> Reply {
    Reply::new(500, "5.5.2 Error: line too long")
}

/// `500 5.5.6`: an XPONY command or message-3 line (or an XFETCH line) over
/// its limit: as for an over-long AUTH line (RFC 4954 §4, §6 X.5.6;
/// proto-spec xpony.md R5, R16, fetch.md F0).
pub fn xpony_line_too_long() -> Reply {
    Reply::new(500, "5.5.6 Line too long")
}

/// `502 5.5.2`: a verb blackpony does not know (RFC 5321 §4.2.2 "command
/// not recognized" is 500, but Postfix's 502 is what clients of the MTA
/// behind the sidecar already see; RFC 3463 X.5.2).
pub fn command_not_recognized() -> Reply {
    Reply::new(502, "5.5.2 Error: command not recognized")
}

/// `502 5.5.1`: a known command that is not offered here (BDAT without
/// CHUNKING, STARTTLS without a certificate, XFETCH without fetch keys):
/// RFC 5321 §4.2.4 "Command not implemented"; RFC 3463 X.5.1; proto-spec
/// xpony.md R4 and fetch.md F1 give this text.
pub fn command_not_implemented() -> Reply {
    Reply::new(502, "5.5.1 Command not implemented")
}

/// `502 5.5.1`: mail commands on the fetch port (proto-spec fetch.md §4).
pub fn fetch_only() -> Reply {
    Reply::new(502, "5.5.1 This port serves XFETCH only, not mail")
}

/// `501 5.5.4`: arguments a command does not take, or not the ones it needs
/// (RFC 5321 §4.2.2 "Syntax error in parameters or arguments"; RFC 3463
/// X.5.4). `usage` is the command's form, as `"STARTTLS"` or `"EHLO hostname"`.
pub fn syntax(usage: &str) -> Reply {
    Reply::new(501, format!("5.5.4 Syntax: {usage}"))
}

/// `503 5.5.1` (RFC 5321 §4.2.2 "Bad sequence of commands"; RFC 3463 X.5.1):
/// a command that needs an EHLO in effect (after STARTTLS or XPONY the client
/// starts over, RFC 3207 §4.2; proto-spec xpony.md R1, fetch.md F3).
pub fn send_ehlo_first() -> Reply {
    send_hello_first("EHLO")
}

/// `503 5.5.1`: as [`send_ehlo_first`], for the greeting a protocol wants
/// (LMTP's is LHLO, RFC 2033 §4.1).
pub fn send_hello_first(hello: &str) -> Reply {
    Reply::new(503, format!("5.5.1 Send {hello} first"))
}

/// `500 5.5.1`: EHLO or HELO to the LMTP server (RFC 2033 §4.1: LMTP has
/// only LHLO).
pub fn this_is_lmtp() -> Reply {
    Reply::new(500, "5.5.1 Error: this is LMTP, say LHLO")
}

/// `500 5.5.1`: LHLO to the SMTP server (RFC 2033 §4.1: LHLO is LMTP's).
pub fn this_is_smtp() -> Reply {
    Reply::new(500, "5.5.1 Error: this is SMTP, say EHLO")
}

/// `503 5.5.1`: MAIL inside a transaction (RFC 5321 §4.1.1.2, §4.2.2).
pub fn nested_mail() -> Reply {
    Reply::new(503, "5.5.1 Error: nested MAIL command")
}

/// `503 5.5.1`: RCPT or DATA before MAIL (RFC 5321 §4.1.4, §4.2.2).
pub fn need_mail() -> Reply {
    Reply::new(503, "5.5.1 Error: need MAIL command")
}

/// `554 5.5.1`: DATA when no recipient was accepted. RFC 5321 §3.3 allows
/// 503 or 554 here; 554 "no valid recipients" is the one it names (and
/// Postfix's).
pub fn no_valid_recipients() -> Reply {
    Reply::new(554, "5.5.1 Error: no valid recipients")
}

/// `503 5.5.1`: STARTTLS with a transaction open at the backend: RFC 3207
/// §4.2 discards the session's state at TLS, a transaction must not survive.
pub fn transaction_in_progress() -> Reply {
    Reply::new(503, "5.5.1 Error: MAIL transaction in progress")
}

/// `503 5.5.1`: XPONY or XFETCH inside a mail transaction (proto-spec
/// xpony.md R2, fetch.md F5; RFC 5321 §4.2.2 bad sequence).
pub fn not_in_transaction() -> Reply {
    Reply::new(503, "5.5.1 Not permitted during a mail transaction")
}

/// `503 5.5.1`: XPONY or STARTTLS on a connection already encrypted
/// (proto-spec xpony.md R3, §6).
pub fn already_encrypted() -> Reply {
    Reply::new(503, "5.5.1 Already encrypted")
}

/// `554 5.5.1`: STARTTLS inside TLS (RFC 3207 §4: not valid after TLS is
/// negotiated; Postfix's code and text).
pub fn tls_already_active() -> Reply {
    Reply::new(554, "5.5.1 Error: TLS already active")
}

/// `554 5.5.1`, then close: plaintext pipelined behind STARTTLS or XPONY
/// would run inside the channel (RFC 3207 §4.2, CVE-2011-0411; proto-spec
/// xpony.md R11). `verb` is `STARTTLS` or `XPONY`.
pub fn pipelined_after(verb: &str) -> Reply {
    Reply::new(
        554,
        format!("5.5.1 Error: command pipelined after {verb}, closing connection"),
    )
}

/// `530 5.7.0`: a command before STARTTLS when TLS is required (RFC 3207 §4).
pub fn must_starttls_first() -> Reply {
    Reply::new(530, "5.7.0 Must issue a STARTTLS command first")
}

/// `550 5.7.0`: XCLIENT, XFORWARD or PROXY from a client (they would let it
/// claim another identity; RFC 3463 X.7.0 other security status; Postfix's
/// text for a client not in its authorized list).
pub fn insufficient_authorization() -> Reply {
    Reply::new(550, "5.7.0 Error: insufficient authorization")
}

// ---------------------------------------------------------------------------
// Envelope and content (RFC 5321 §4.2.2, §4.5.3.1; RFC 3463 X.1.x, X.3.x, X.6.x).

/// `501 5.1.7`: a MAIL FROM path that is not an address (RFC 3463 X.1.7).
pub fn bad_sender_syntax() -> Reply {
    Reply::new(501, "5.1.7 Bad sender address syntax")
}

/// `501 5.1.3`: a RCPT TO path that is not an address (RFC 3463 X.1.3).
pub fn bad_recipient_syntax() -> Reply {
    Reply::new(501, "5.1.3 Bad recipient address syntax")
}

/// `501 5.1.3`: [`bad_recipient_syntax`] with what is wrong with it.
pub fn bad_recipient_syntax_because(why: impl Display) -> Reply {
    Reply::new(501, format!("5.1.3 Bad recipient address syntax: {why}"))
}

/// `452 4.3.1`: the messages in flight hold all the memory the server
/// allows (RFC 5321 §4.2.2 452 "insufficient system storage", RFC 3463
/// X.3.1 mail system full); to a recipient whose `SIZE=` does not fit (RFC
/// 1870 §6.1) or to a complete message. The client sends it again later.
pub fn insufficient_storage() -> Reply {
    Reply::new(452, "4.3.1 Insufficient system storage, try again later")
}

/// `452 4.5.3`: one recipient over the limit of a transaction (RFC 5321
/// §4.5.3.1.10: 452 and the client sends the rest later; RFC 3463 X.5.3).
pub fn too_many_recipients() -> Reply {
    Reply::new(452, "4.5.3 Error: too many recipients")
}

/// `452 4.5.3`: the outbound SMTP proxy takes one destination domain per
/// transaction; the MTA sends the others in a new one (RFC 5321 §4.5.3.1.10).
pub fn one_domain_per_transaction() -> Reply {
    Reply::new(
        452,
        "4.5.3 One destination domain per transaction: send the other recipients in a new transaction",
    )
}

/// `501 5.5.4`: a MAIL `SIZE=` whose value is not a number (RFC 1870 §3:
/// `1*20DIGIT`; Postfix's text).
pub fn bad_size_syntax() -> Reply {
    Reply::new(501, "5.5.4 Bad message size syntax")
}

/// `552 5.3.4`: a declared (RFC 1870 §6) or actual message size over the
/// limit (RFC 5321 §4.5.3.1.10; RFC 3463 X.3.4).
pub fn message_too_big() -> Reply {
    Reply::new(552, "5.3.4 Message size exceeds fixed maximum message size")
}

/// `550 5.6.11`: bare CR or LF in message content (RFC 5321 §2.3.8 allows
/// CR and LF only together; RFC 3463 X.6.x media errors).
pub fn bare_newline() -> Reply {
    Reply::new(
        550,
        "5.6.11 Message refused: bare CR or LF in message content (RFC 5321 section 2.3.8)",
    )
}

/// `550 5.6.0`: NUL in message content (RFC 5322 §3.5 forbids it; RFC 3463
/// X.6.0 other media error).
pub fn contains_nul() -> Reply {
    Reply::new(
        550,
        "5.6.0 Message refused: message contains NUL characters (RFC 5322 section 3.5)",
    )
}

// ---------------------------------------------------------------------------
// Closing the session (421, RFC 5321 §3.8, §4.2.2: "<domain> Service not
// available, closing transmission channel").

/// `421 4.3.2`: the server is shutting down (RFC 3463 X.3.2: imminent
/// shutdown).
pub fn shutting_down(host: &str) -> Reply {
    Reply::new(421, format!("4.3.2 {host} Service shutting down"))
}

/// `421 4.3.2`: the backend behind the sidecar cannot be reached or went
/// away (RFC 3463 X.3.2: system not accepting network messages).
pub fn service_unavailable(host: &str) -> Reply {
    Reply::new(
        421,
        format!("4.3.2 {host} Service not available, closing connection"),
    )
}

/// `421 4.3.2`: every connection slot is taken (RFC 3463 X.3.2 names
/// "excessive load"; Postfix's postscreen says 4.3.2 when all ports are busy).
/// The greeting of the roles that face the internet (`inbound`, `seal`, the
/// fetch listener: the listener harness's own refusal, `server::refusal`),
/// in Postfix's words and with the host name a remote operator looks for
/// (RFC 5321 §3.8, §4.2: a 421 names the host). `blackpony outbound`, which
/// only its own MTA reaches, says [`mta_connections_busy`] instead.
pub fn too_many_connections(host: &str) -> Reply {
    Reply::new(421, format!("4.3.2 {host} Error: too many connections"))
}

/// `421 4.3.2`: `blackpony outbound` serves `--max-connections` MTA
/// connections already (RFC 3463 X.3.2); the MTA on the same host retries.
/// The same event as [`too_many_connections`] (every slot taken) for a
/// different reader: the local MTA, which logs the reply in its deferral
/// ("try again later" says it is its own sidecar's limit, not the remote
/// MX's), so no host name. Kept apart rather than merged: `outbound`'s
/// text is documented (docs/manual/outbound.md) and operators grep for it.
pub fn mta_connections_busy() -> Reply {
    Reply::new(421, "4.3.2 Too many connections, try again later")
}

/// `421 4.3.1`: the message arriving would take more memory than the
/// server allows messages in flight (RFC 3463 X.3.1: mail system full);
/// told at once, not after the rest, and the connection closes (§3.8).
pub fn insufficient_storage_closing(host: &str) -> Reply {
    Reply::new(
        421,
        format!("4.3.1 {host} Insufficient system storage, closing connection"),
    )
}

/// `421 4.7.0`: a per-client limit (`whom` is "your address" or "your
/// network"): a policy refusal, RFC 3463 X.7.0, as Postfix's anvil gives it.
pub fn too_many_connections_from(host: &str, whom: &str) -> Reply {
    Reply::new(
        421,
        format!("4.7.0 {host} Error: too many connections from {whom}"),
    )
}

/// `421 4.7.0`: an idle session closed so a new client gets its slot.
pub fn evicted(host: &str) -> Reply {
    Reply::new(
        421,
        format!("4.7.0 {host} Error: too many connections, closing idle session"),
    )
}

/// `421 4.7.0`: the client's error budget is spent (Postfix's
/// `smtpd_hard_error_limit` reply).
pub fn too_many_errors(host: &str) -> Reply {
    Reply::new(421, format!("4.7.0 {host} Error: too many errors"))
}

/// `421 4.4.2`: the client was silent too long (RFC 5321 §4.5.3.2.7; RFC
/// 3463 X.4.2 bad connection).
pub fn timeout(host: &str) -> Reply {
    Reply::new(421, format!("4.4.2 {host} Error: timeout exceeded"))
}

/// `421 4.4.2`: no XPONY message 3 within its deadline (proto-spec xpony.md
/// R17, §3.8).
pub fn xpony_timeout() -> Reply {
    Reply::new(421, "4.4.2 Timeout waiting for XPONY")
}

/// `421 4.4.1`: the backend did not answer (or read) in time (RFC 3463
/// X.4.1 no answer from host).
pub fn backend_timed_out(host: &str) -> Reply {
    Reply::new(421, format!("4.4.1 {host} Error: mail system timed out"))
}

/// `421 4.3.0`: the backend sent something that is not an SMTP reply, or a
/// reply nobody asked for (RFC 3463 X.3.0 other mail system status).
pub fn backend_problem(host: &str) -> Reply {
    Reply::new(421, format!("4.3.0 {host} Error: mail system problem"))
}

/// `421 4.3.0`: the backend refused a command the sidecar sends on its own
/// (XCLIENT, the EHLO after TLS): its configuration does not fit.
pub fn backend_configuration_problem(host: &str) -> Reply {
    Reply::new(
        421,
        format!("4.3.0 {host} Error: mail system configuration problem"),
    )
}

// ---------------------------------------------------------------------------
// XPONY (proto-spec xpony.md §3.3, the R rules).

/// `501 5.5.4`: R6, the XPONY command's syntax.
pub fn xpony_syntax() -> Reply {
    syntax("XPONY protocol-name base64")
}

/// `504 5.5.4`: R7, a protocol name the server did not list (RFC 4954 §4
/// uses 504 for an unknown mechanism).
pub fn unrecognized_protocol_name() -> Reply {
    Reply::new(504, "5.5.4 Unrecognized protocol name")
}

/// `501 5.5.2`: R8, R14, a message that is not base64 (RFC 4954 §4).
pub fn cannot_decode_base64() -> Reply {
    Reply::new(501, "5.5.2 Cannot decode base64")
}

/// `535 5.7.8`: R10, R15, a handshake message that fails (RFC 4954 §6
/// X.7.8, authentication credentials invalid).
pub fn xpony_handshake_failed() -> Reply {
    Reply::new(535, "5.7.8 Handshake failed")
}

/// `501 5.7.0`: R13, the client sent `*` (RFC 4954 §4, an AUTH exchange
/// cancelled).
pub fn xpony_aborted() -> Reply {
    Reply::new(501, "5.7.0 XPONY aborted")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every constructor, with whether its reply must carry an enhanced code
    /// (RFC 2034 §3: every 2xx, 4xx and 5xx once ENHANCEDSTATUSCODES is on;
    /// the greeting, HELO's 250 and 354 have none).
    fn all() -> Vec<(Reply, bool)> {
        let host = "mx.example";
        let ip = std::net::IpAddr::from([192, 0, 2, 1]);
        let long = "x".repeat(64);
        vec![
            (greeting(host, "ESMTP"), false),
            (helo(host), false),
            (ok(), true),
            (bye(), true),
            (sender_ok(), true),
            (recipient_ok(), true),
            (cannot_verify(), true),
            (start_mail_input(), false),
            (ready_to_start_tls(), true),
            (sealed_as(&long), true),
            (sealed_for("a@example.org", &long), true),
            (bad_syntax(), true),
            (line_too_long(), true),
            (xpony_line_too_long(), true),
            (command_not_recognized(), true),
            (command_not_implemented(), true),
            (fetch_only(), true),
            (syntax("EHLO hostname"), true),
            (send_ehlo_first(), true),
            (send_hello_first("LHLO"), true),
            (this_is_lmtp(), true),
            (this_is_smtp(), true),
            (nested_mail(), true),
            (need_mail(), true),
            (no_valid_recipients(), true),
            (transaction_in_progress(), true),
            (not_in_transaction(), true),
            (already_encrypted(), true),
            (tls_already_active(), true),
            (pipelined_after("STARTTLS"), true),
            (must_starttls_first(), true),
            (insufficient_authorization(), true),
            (bad_sender_syntax(), true),
            (bad_recipient_syntax(), true),
            (bad_recipient_syntax_because("no domain"), true),
            (too_many_recipients(), true),
            (one_domain_per_transaction(), true),
            (message_too_big(), true),
            (bad_size_syntax(), true),
            (bare_newline(), true),
            (contains_nul(), true),
            (shutting_down(host), true),
            (service_unavailable(host), true),
            (too_many_connections(host), true),
            (too_many_connections_from(host, "your network"), true),
            (mta_connections_busy(), true),
            (insufficient_storage_closing(host), true),
            (insufficient_storage(), true),
            (evicted(host), true),
            (too_many_errors(host), true),
            (timeout(host), true),
            (xpony_timeout(), true),
            (backend_timed_out(host), true),
            (backend_problem(host), true),
            (backend_configuration_problem(host), true),
            (xpony_syntax(), true),
            (unrecognized_protocol_name(), true),
            (cannot_decode_base64(), true),
            (xpony_handshake_failed(), true),
            (xpony_aborted(), true),
            (relay_access_denied("a@example.org"), true),
            (no_such_mailbox("a@example.org"), true),
            (cannot_store(), true),
            (no_spool(), true),
            (no_result_for_recipient(), true),
            (fetch_needs_xpony(), true),
            (fetch_key_not_authorized("SHA256:x"), true),
            (spool_unavailable(), true),
            (fetch_message(&long, 1 << 28), true),
            (fetch_empty(), true),
            (fetch_deleted(&long), true),
            (lost_after_message(), true),
            (no_reply_after_message(), true),
            (no_reply_to_rcpt(), true),
            (too_big_for_remote(u64::MAX), true),
            (needs_smtputf8(), true),
            (nul_not_sent(), true),
            (delivery_time_limit(), true),
            (no_usable_mx(&long), true),
            (null_mx(&long), true),
            (no_such_domain(&long), true),
            (domain_has_no_address(&long), true),
            (bad_destination_domain(&long), true),
            (dns_lookup_failed(&long, "SERVFAIL"), true),
            (mx_lookup_failed("mx.example: SERVFAIL"), true),
            (address_literal_refused("[192.0.2.1]"), true),
            (connect_failed(host, ip, 25, "refused"), true),
            (not_smtp(host, ip, "bad code"), true),
            (tls_handshake_failed(host, ip, "alert"), true),
            (dane_mismatch(host, ip, "no match"), true),
            (certificate_not_verified(host, "expired"), true),
            (dane_refused(host, "bogus"), true),
            (
                tls_required("policy verify", host, ip, "did not offer STARTTLS"),
                true,
            ),
            (sts_lists_no_mx(&long, "20261203", host, host), true),
            (xpony_downgrade(host, ip), true),
            (xpony_key_refused("not the pinned key"), true),
            (xpony_failed(host, ip, "decrypt"), true),
            (lost_waiting_for(host, ip, "end of data"), true),
            (lost_after_end_of_data(host, ip), true),
            (lost_during_transaction(host, ip), true),
            (lost_connection(host, ip), true),
            (lost_remote_session(), true),
            (maildir_delivered(&long), true),
            (maildir_not_open(), true),
            (local_store_failed("No space left on device"), true),
            (not_an_mta(), true),
            (local_connect_failed("127.0.0.1:24", "timed out"), true),
            (local_delivery_failed("refused"), true),
        ]
    }

    #[test]
    fn code_and_enhanced_class_agree() {
        for (reply, enhanced) in all() {
            let code = reply.code();
            assert!((200..600).contains(&code), "{reply}");
            // `enhanced_status` is only Some when its class is the code's.
            match reply.enhanced_status() {
                Some(status) => {
                    assert_eq!(status.as_bytes()[0], b'0' + (code / 100) as u8, "{reply}")
                }
                None => assert!(
                    !enhanced,
                    "no enhanced code, or its class is wrong: {reply}"
                ),
            }
            if !enhanced {
                assert!(
                    reply.enhanced_status().is_none(),
                    "{reply}: this reply comes before ENHANCEDSTATUSCODES or is 3xx"
                );
            }
        }
    }

    #[test]
    fn single_line_and_within_512_octets() {
        for (reply, _) in all() {
            assert_eq!(reply.lines().len(), 1, "{reply}");
            let wire = reply.to_bytes();
            // RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets, CRLF
            // included.
            assert!(wire.len() <= 512, "{} octets: {reply}", wire.len());
            assert!(wire.ends_with(b"\r\n"), "{reply}");
            assert!(
                !wire[..wire.len() - 2].contains(&b'\n')
                    && !wire[..wire.len() - 2].contains(&b'\r'),
                "{reply}"
            );
        }
    }

    #[test]
    fn one_text_per_meaning() {
        // Two constructors giving the same reply would be one meaning
        // written twice.
        let all = all();
        for (i, (a, _)) in all.iter().enumerate() {
            for (b, _) in &all[i + 1..] {
                assert_ne!(a, b, "the same reply from two constructors");
            }
        }
    }
}
