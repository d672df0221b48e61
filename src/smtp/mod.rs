//! The SMTP protocol core, sans-IO: parsers and formatters over bytes, used by
//! both directions (the inbound sidecar as a server, the outbound transport
//! as a client). Nothing here touches a socket.

pub mod client;
pub mod command;
pub mod data;
pub mod ehlo;
pub mod envelope;
pub mod limits;
pub mod mime;
pub mod replies;
pub mod reply;
pub mod server;
pub mod xpony_server;

pub use command::{Command, CommandError, NextLine, Verb};
pub use data::{BareNewlines, DataScanner, DotStuffer};
pub use ehlo::{Capability, EhloReply};
pub use envelope::{ContentFacts, Envelope};
pub use reply::{EnhancedStatus, Reply, ReplyError, ReplyParser, ReplySpan};
