//! Which of the backend's EHLO extensions the sidecar offers the internet.

use super::state::Session;
use crate::smtp::{EhloReply, Reply};

/// Extensions a backend may announce that are safe to offer the internet
/// through the sidecar. Everything else is dropped: STARTTLS (the sidecar owns
/// TLS), XCLIENT and XFORWARD (trusted hosts only), CHUNKING and BINARYMIME
/// (the sidecar reads DATA only), and anything it does not know.
const PASSED_EXTENSIONS: &[&str] = &[
    "SIZE",
    "PIPELINING",
    "8BITMIME",
    "DSN",
    "ENHANCEDSTATUSCODES",
    "SMTPUTF8",
    "AUTH",
    "ETRN",
    "VRFY",
    "EXPN",
    "HELP",
    "DELIVERBY",
    "MT-PRIORITY",
    "FUTURERELEASE",
    "RRVS",
    "MTRK",
    "LIMITS",
];

impl Session {
    /// Relays a 250 EHLO reply with only the extensions that are safe to
    /// offer through the sidecar, plus STARTTLS until TLS is up.
    pub(super) fn rewrite_ehlo(&mut self, reply: &Reply) {
        let mut ehlo = EhloReply::parse(reply);
        self.backend_size = ehlo.size_limit();
        let tls_up = self.tls.is_some();
        ehlo.capabilities.retain(|c| {
            PASSED_EXTENSIONS.contains(&c.keyword.as_str())
                // RFC 8689 §4.1: REQUIRETLS is only offered inside TLS.
                || (c.keyword == "REQUIRETLS" && tls_up)
        });
        if !tls_up {
            ehlo.capabilities
                .push(crate::smtp::Capability::new("STARTTLS", ""));
        }
        // Neither extension is offered once the session is encrypted.
        self.xpony_offered = !tls_up && self.config.pony.is_some();
        if self.xpony_offered {
            ehlo.capabilities.push(crate::smtp::Capability::xpony());
        }
        let rewritten = ehlo.to_reply();
        let start = self.to_client.len();
        rewritten.write_to(&mut self.to_client);
        self.ehlo_reply_sent = self.to_client[start..].to_vec();
        self.stats.last_reply = format!("250 {}", ehlo.greeting);
    }
}
