//! The integration test binary: the roles run in-process on port 0 and are
//! driven over real sockets. Tests against third-party mail software live in
//! `interop/`.

#![forbid(unsafe_code)]

mod activation;
mod daemon;
mod error_limits;
mod fetch;
mod inbound;
mod lmtp;
mod load;
mod notify;
mod outbound;
mod support;
mod threads;
