//! blackpony: opportunistic encryption for mail servers.
//!
//! # Layout
//!
//! Lower layers never import higher ones: `smtp` and `pony` import no role
//! and not `cli`, `pony` does not import `smtp` (below it); no role imports
//! another role or `cli`; no two files import each other. The reasons, and
//! the three sans-IO state machines and how they are driven, are in
//! `docs/ARCHITECTURE.md`.
//!
//! | folder | what it holds |
//! |---|---|
//! | [`smtp`] | the sans-IO protocol core: commands, replies (and every reply blackpony writes itself, named, in `smtp::replies`), EHLO capabilities, the DATA scanner and dot-stuffer, MIME downgrade, the client session (delivery) and the receiving session (LMTP/SMTP from an MTA) |
//! | [`pony`] | the blackpony extension (XPONY): Noise XX, the framed channel, host keys and DNS key records, pins, the negotiation data, the spec's vectors |
//! | [`transport`] | byte streams that may be plain TCP, TLS or the XPONY channel, the TLS configuration (both sides, ring provider only), and the driver of a client session over them |
//! | [`inbound`] | the sidecar on port 25: a sans-IO relay session and the thin tokio loop that drives it |
//! | [`outbound`] | the transport an MTA hands mail to: MX resolution, route planning, TLS policy, the delivery loop, kept MX sessions and the LMTP/SMTP service |
//! | [`relay`] | the sealed relay: the format inside each sealed file, sealing with age, the receiving MX (`seal`), the fetch protocol (XFETCH) between the relay and the home machine |
//! | [`state`] | the state-store seam: the sealed spool (atomic publish, listing, removal) with its fsync rules in one place |
//! | [`stats`] | `blackpony stats`: counts blackpony's own log lines (encrypted share per day and peer, refusals) and renders text, JSON or an HTML page |
//! | [`server`] | the listener harness every server role runs on: limits per client, per network and in all, stress, eviction, client deadlines, the accept queue, the budget of message memory, the drain at shutdown |
//! | [`cli`] | flags and config file, builds a role's settings and calls its `run` |
//! | [`check`] | `blackpony check`: files, permissions, addresses, and the backend MTA probed (identity mode, relaying) |
//! | [`log`] | one-line, Postfix-style log records |
//! | [`sysexits`] | the exit statuses (sysexits.h) every role exits with |
//! | `fuzz_checks` | invariants shared by the fuzz targets in `fuzz/` and a deterministic test |
//!
//! Each role's `run` takes its listener, its TLS configuration and a shutdown
//! future, so tests drive it on port 0.

#![forbid(unsafe_code)]

pub mod check;
pub mod cli;
#[doc(hidden)]
pub mod fuzz_checks;
pub mod inbound;
pub mod log;
pub mod outbound;
pub mod pony;
pub mod relay;
pub mod server;
pub mod smtp;
pub mod state;
pub mod stats;
pub mod sysexits;
pub mod transport;
