//! `blackpony keygen`: a host key for XPONY (and the DNS record that
//! publishes it), or an age identity for sealed mail.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::error::fail;
use super::{seal, sys};
use crate::sysexits::Exit;

/// `blackpony keygen`
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the key [default: /etc/blackpony/host.key, with
    /// --age /etc/blackpony/mail.age.key].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Make an age identity for sealed mail instead (X25519, age-keygen's
    /// file format) and print its recipient (age1…) for `seal`. Keep it at
    /// home: the relay needs only the recipient.
    #[arg(long)]
    pub age: bool,
    /// The MX host name the DNS record is for [default: the system host name].
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Replace an existing key file (every peer that pinned the old key will
    /// refuse this host until its operator accepts the new one).
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: KeygenArgs) -> ExitCode {
    use crate::pony::keys;
    if args.age {
        let out = args
            .out
            .unwrap_or_else(|| PathBuf::from("/etc/blackpony/mail.age.key"));
        return seal::keygen_age(&out, args.force);
    }
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("/etc/blackpony/host.key"));
    let pair = match keys::generate_file(&out, args.force) {
        Ok(p) => p,
        Err(e) => return fail(Exit::Config, &e.to_string()),
    };
    let host = args.hostname.unwrap_or_else(sys::system_hostname);
    let public = pair.public();
    println!("wrote {} (mode 0600)", out.display());
    println!("public key:  {}", keys::encode_key(&public));
    println!("fingerprint: {}", keys::fingerprint(&public));
    println!("DNS record to publish (lets first contacts authenticate this host):");
    println!(
        "{}. IN TXT \"{}\"",
        keys::dns_name(&host),
        keys::dns_record(&public)
    );
    ExitCode::SUCCESS
}
