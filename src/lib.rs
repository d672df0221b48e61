//! blackpony: opportunistic encryption for mail servers.
//!
//! # Layout
//!
//! | folder | what it holds |
//! |---|---|
//! | [`smtp`] | the sans-IO protocol core: commands, replies, EHLO capabilities, the DATA scanner and dot-stuffer, the client session (delivery) and the receiving session (LMTP/SMTP from an MTA) |
//! | [`transport`] | byte streams that may be plain TCP or TLS, and the TLS configuration (both sides) |
//! | [`inbound`] | the sidecar on port 25: a sans-IO relay session and the thin tokio loop that drives it |
//! | [`pony`] | the blackpony extension: the Noise XX handshake and transport (framing, pins and DNS keys to come) |
//! | [`outbound`] | the transport an MTA hands mail to: MX resolution, route planning, TLS policy, the delivery loop and the LMTP/SMTP service |
//! | [`cli`] | argument and config-file parsing; calls a role's `run` |
//! | [`log`] | one-line, Postfix-style log records |
//! | `fuzz_checks` | invariants shared by the fuzz targets in `fuzz/` and a deterministic test |
//!
//! Each role's `run` takes its listener, its TLS configuration and a shutdown
//! future, so tests drive it on port 0.

pub mod cli;
#[doc(hidden)]
pub mod fuzz_checks;
pub mod inbound;
pub mod log;
pub mod outbound;
pub mod pony;
pub mod smtp;
pub mod transport;
