//! The mail that carries a TLS report (RFC 8460 §5.3) is delivered
//! "despite any TLS-related failures": a report may be about the very
//! failure that would hold it back.

use crate::log;
use crate::outbound::report::Status;
use crate::outbound::{Deliverer, PolicyTable, RecipientStatus, TlsPolicy};
use crate::smtp::Envelope;

/// A report goes out under `may` whatever the configured policy
/// (STARTTLS when offered, any certificate; no DANE or MTA-STS
/// enforcement, as RFC 8689's `TLS-Required: No` asks of a relay), and
/// once more in plaintext at once when that was deferred. Its sessions are
/// not recorded for the next report (§5.3: SHOULD NOT).
pub struct ReportMailer {
    opportunistic: Deliverer,
    plaintext: Deliverer,
}

impl ReportMailer {
    /// Two deliverers built from the operator's settings; their TLS
    /// policy, MTA-STS and outcome recording are set here.
    pub fn new(opportunistic: Deliverer, plaintext: Deliverer) -> Self {
        ReportMailer {
            opportunistic: for_reports(opportunistic, TlsPolicy::May),
            plaintext: for_reports(plaintext, TlsPolicy::None),
        }
    }

    pub async fn deliver(&self, envelope: &Envelope, message: &[u8]) -> Vec<RecipientStatus> {
        let first = self.opportunistic.deliver(envelope, message).await;
        let deferred: Vec<String> = first
            .iter()
            .filter(|s| s.status() == Status::Deferred)
            .map(|s| s.recipient.clone())
            .collect();
        if deferred.is_empty() {
            return first;
        }
        log!(
            "tlsrpt: {} deferred under policy may ({}); sending in plaintext now (RFC 8460 §5.3)",
            deferred.join(","),
            first
                .iter()
                .find(|s| s.status() == Status::Deferred)
                .map(|s| s.reply.to_string())
                .unwrap_or_default()
        );
        let retry = Envelope {
            sender: envelope.sender.clone(),
            recipients: deferred,
        };
        let mut again = self.plaintext.deliver(&retry, message).await;
        let mut out: Vec<_> = first
            .into_iter()
            .filter(|s| s.status() != Status::Deferred)
            .collect();
        out.append(&mut again);
        out
    }
}

fn for_reports(mut deliverer: Deliverer, policy: TlsPolicy) -> Deliverer {
    deliverer.policy = PolicyTable {
        default: policy,
        domains: Default::default(),
    };
    deliverer.sts = None;
    deliverer.outcomes = None;
    deliverer
}
