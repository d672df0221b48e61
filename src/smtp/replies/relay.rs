//! The sealed relay's own replies: as a receiving MX, and on its fetch port
//! (XFETCH, proto-spec/sealed-relay.md).

use crate::smtp::Reply;

// ---------------------------------------------------------------------------
// The sealed relay as a receiving MX.

/// `550 5.7.1`: a recipient in a domain the relay does not serve; it is never
/// an open relay (RFC 5321 §3.6.2, §7.1; RFC 3463 X.7.1; Postfix's text).
pub fn relay_access_denied(recipient: &str) -> Reply {
    Reply::new(550, format!("5.7.1 <{recipient}>: Relay access denied"))
}

/// `550 5.1.1`: a served domain, but no key for this mailbox (RFC 3463 X.1.1
/// bad destination mailbox address).
pub fn no_such_mailbox(recipient: &str) -> Reply {
    Reply::new(
        550,
        format!("5.1.1 <{recipient}>: Recipient address rejected: no such mailbox here"),
    )
}

/// `451 4.3.0`: the relay cannot store a message now; the client keeps it
/// and retries (RFC 5321 §4.2.3 451 local error in processing).
pub fn cannot_store() -> Reply {
    Reply::new(
        451,
        "4.3.0 Error: cannot store the message now, try again later",
    )
}

/// `451 4.3.0`: a server built for a spool has none (a configuration error
/// the client should not pay for: it retries).
pub fn no_spool() -> Reply {
    Reply::new(451, "4.3.0 Error: no spool configured")
}

/// `451 4.3.0`: LMTP owes one reply per recipient (RFC 2033 §4.2); one the
/// delivery did not produce is a temporary failure, never a silent success.
pub fn no_result_for_recipient() -> Reply {
    Reply::new(451, "4.3.0 Error: no result for this recipient")
}

// ---------------------------------------------------------------------------
// XFETCH (proto-spec fetch.md §5, the F rules).

/// `530 5.7.0`: F2, XFETCH outside an XPONY channel (RFC 3207 §4 gives 530
/// to a command that needs encryption first).
pub fn fetch_needs_xpony() -> Reply {
    Reply::new(530, "5.7.0 XFETCH needs an XPONY channel")
}

/// `535 5.7.8`: F4, a channel key that is not a fetch key (RFC 4954 §6
/// X.7.8). `fingerprint` is the key's `SHA256:` form.
pub fn fetch_key_not_authorized(fingerprint: &str) -> Reply {
    Reply::new(
        535,
        format!("5.7.8 Key {fingerprint} not authorized for XFETCH"),
    )
}

/// `451 4.3.0`: F7, the spool could not be read or changed.
pub fn spool_unavailable() -> Reply {
    Reply::new(451, "4.3.0 Spool not available")
}

/// `250 2.0.0`: F8, the line before a sealed file of `len` octets.
pub fn fetch_message(id: &str, len: usize) -> Reply {
    Reply::new(250, format!("2.0.0 MESSAGE {id} {len}"))
}

/// `250 2.0.0`: F9, nothing left to fetch.
pub fn fetch_empty() -> Reply {
    Reply::new(250, "2.0.0 EMPTY")
}

/// `250 2.0.0`: F10, a fetched message deleted (or already gone).
pub fn fetch_deleted(id: &str) -> Reply {
    Reply::new(250, format!("2.0.0 Deleted {id}"))
}
