//! The sealed relay (issue 10): `seal` on the always-on MX, `fetch` at home.
//! The relay keeps only ciphertext: each accepted message is sealed with age
//! to its owner's offline keys the moment it arrives and published to a
//! spool ([`crate::state::spool`]); the home machine fetches and decrypts.
//!
//! - [`sealed`]: the plaintext format inside each sealed file
//!   (`proto-spec/sealed-relay.md` §1);
//! - [`seal`]: whose keys a message is sealed to, sealing and opening;
//! - [`server`]: `blackpony seal`, the receiving MX (SMTP) and the LMTP
//!   service that seal each accepted message before answering 250;
//! - [`xfetch`]: the fetch protocol inside the XPONY channel
//!   (`proto-spec/fetch.md`), sans-IO, both sides;
//! - [`fetch_server`]: the relay's side of XFETCH over the spool;
//! - [`fetch`]: `blackpony fetch`, the home side: pull, decrypt, deliver
//!   (SMTP or [`maildir`]), then delete, with a [`journal`] of deliveries
//!   the relay has not confirmed yet.

pub mod fetch;
pub mod fetch_server;
pub mod journal;
pub mod maildir;
pub mod seal;
pub mod sealed;
pub mod server;
pub mod xfetch;
