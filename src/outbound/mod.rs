//! The outbound transport: the MTA hands blackpony a message, blackpony
//! delivers it to the recipients' MX hosts now and reports the remote's own
//! reply per recipient, so the MTA keeps its queue and retries.
//!
//! - [`dns`]: MX, address and TXT lookups (hickory-resolver);
//! - [`route`]: MX ordering (RFC 5321 §5.1);
//! - [`dane`]: DANE for SMTP (RFC 7672): whether it applies to an MX host,
//!   and what the host's TLS must then be;
//! - [`policy`]: TLS policy per destination and the security level reached;
//! - [`sts`], [`sts_fetch`]: MTA-STS (RFC 8461): the policy parser and
//!   cache rules (sans-IO), the TXT lookup and HTTPS fetch;
//! - [`memory`]: hosts whose TLS handshake failed (plaintext after a backoff);
//! - [`outcome`]: what a TLS policy decided per MX host, for TLS reporting
//!   (RFC 8460);
//! - [`deliver`]: the [`Deliverer`] and a message's delivery, one domain
//!   after another;
//! - [`mx_hosts`]: a domain's MX addresses and what each host must get
//!   (MTA-STS, DANE, the plaintext retry), and the TLS outcome of each
//!   session for reports;
//! - [`mx_walk`]: the one walk over those hosts, a kept session first;
//! - [`connection`]: one open connection to an MX address, and the loop
//!   that drives the sans-IO
//!   [`ClientSession`](crate::smtp::client::ClientSession) over it;
//! - [`xpony`]: XPONY's client side: a host's key evidence, the judgement
//!   of the key it presents, the pin kept after the session;
//! - [`report`]: a recipient's status, its log line, and the replies that
//!   stand for failures without one;
//! - [`cache`]: MX sessions kept open between transactions (every mode);
//! - [`proxy`]: the SMTP proxy's transaction on an MX session, relayed
//!   command by command;
//! - [`service`]: the LMTP/SMTP service an MTA hands messages to;
//! - [`exit`]: how outcomes become sysexits codes for one-shot mode;
//! - [`tlsrpt`]: TLS reports (RFC 8460): session records and the report;
//!   [`tlsrpt_post`]: their submission to `https:` destinations;
//!   [`tlsrpt_mail`]: their mail, delivered despite TLS failures (§5.3);
//!   [`dkim`]: the DKIM signature a mailed report must carry (§5.3).

pub mod cache;
pub mod connection;
pub mod dane;
pub mod deliver;
pub mod dkim;
pub mod dns;
pub mod exit;
pub mod memory;
pub mod mx_hosts;
pub mod mx_walk;
pub mod outcome;
pub mod policy;
pub mod probe;
pub mod proxy;
pub mod report;
pub mod route;
pub mod service;
pub mod sts;
pub mod sts_fetch;
pub mod tlsrpt;
pub mod tlsrpt_mail;
pub mod tlsrpt_post;
pub mod xpony;

pub use deliver::{Deliverer, Limits};
pub use dns::MailResolver;
pub use outcome::{OutcomeSink, PolicyOutcome, PolicyType, TlsFailure};
pub use policy::{PolicyTable, SecurityLevel, TlsPolicy};
pub use report::{RecipientStatus, Status};
