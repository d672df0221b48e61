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
//! - [`connection`]: one open connection to an MX address and its evidence;
//! - [`deliver`]: the I/O loop around the sans-IO
//!   [`ClientSession`](crate::smtp::client::ClientSession);
//! - [`cache`]: MX sessions kept open between transactions (every mode);
//! - [`service`]: the LMTP/SMTP service an MTA hands messages to;
//! - [`exit`]: how outcomes become sysexits codes for one-shot mode;
//! - [`tlsrpt`]: TLS reports (RFC 8460): session records and the report.

pub mod cache;
pub mod connection;
pub mod dane;
pub mod deliver;
pub mod dns;
pub mod exit;
pub mod memory;
pub mod outcome;
pub mod policy;
pub mod probe;
pub mod route;
pub mod service;
pub mod sts;
pub mod sts_fetch;
pub mod tlsrpt;

pub use deliver::{Deliverer, Limits, RecipientStatus, Status};
pub use dns::MailResolver;
pub use outcome::{OutcomeSink, PolicyOutcome, PolicyType, TlsFailure};
pub use policy::{PolicyTable, SecurityLevel, TlsPolicy};
