//! The sealed relay (issue 10): `seal` on the always-on MX, `fetch` at home.
//!
//! - [`xfetch`]: the fetch protocol inside the XPONY channel
//!   (`proto-spec/fetch.md`), sans-IO, both sides.

pub mod xfetch;
