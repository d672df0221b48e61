//! The integration test binary: the roles run in-process on port 0 and are
//! driven over real sockets. Tests against third-party mail software live in
//! `interop/`.

mod fetch;
mod inbound;
mod notify;
mod support;
