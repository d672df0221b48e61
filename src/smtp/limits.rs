//! Bounds on everything a peer can send (RFC 5321 §4.5.3).
//!
//! RFC 5321 §4.5.3.1 sets minimum maxima (512 octets for a command line,
//! 512 for a reply line, 1000 for a text line). Extensions such as SIZE,
//! DSN's ORCPT and SMTPUTF8 make real command lines longer, so like Postfix
//! (`line_length_limit = 2048`) we allow more, but never without limit.

use std::time::Duration;

/// Longest command line we accept, CRLF included.
pub const MAX_COMMAND_LINE: usize = 4096;

/// Longest reply line we accept from a server, CRLF included.
pub const MAX_REPLY_LINE: usize = 4096;

/// Most lines in one multi-line reply (an EHLO reply has about 15).
pub const MAX_REPLY_LINES: usize = 100;

/// RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for the next command.
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(300);

/// RFC 5321 §4.5.3.2.6: a client waits at least 10 minutes for the reply to
/// end-of-data; we use the longest of the client timeouts for every reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(600);
