//! MTA-STS flags shared by every outbound mode (`deliver`, `lmtp`,
//! `outbound`), flattened into [`OutboundArgs`](super::outbound::OutboundArgs); the
//! file keys are `mta_sts` and the `[outbound.mta_sts_domains]` table.

use clap::Args;

/// `--no-mta-sts` and the policy host port for tests.
#[derive(Debug, Args, Default, Clone)]
pub struct StsArgs {
    /// Do not look up MTA-STS policies (RFC 8461). By default they are
    /// looked up for every recipient domain (except address literals and
    /// domains under TLS policy none): under `enforce` only the MX hosts the
    /// policy lists are used, over TLS with a certificate valid for the MX
    /// name (as --tls-ca-file trusts), else the mail is deferred; `testing`
    /// logs what would have failed. Per domain: [outbound.mta_sts_domains].
    #[arg(long)]
    pub no_mta_sts: bool,

    /// HTTPS port of MTA-STS policy hosts. For tests only: policies are
    /// served on port 443.
    #[arg(long, value_name = "PORT", hide = true)]
    pub mta_sts_port: Option<u16>,
}

/// The MTA-STS settings after merging flags and the `[outbound]` file keys.
pub fn settings(
    args: &StsArgs,
    file_switch: Option<bool>,
    domains: std::collections::HashMap<String, bool>,
) -> crate::outbound::sts_fetch::StsSettings {
    crate::outbound::sts_fetch::StsSettings {
        enabled: !args.no_mta_sts && file_switch.unwrap_or(true),
        domains: domains
            .into_iter()
            .map(|(d, on)| (d.trim_end_matches('.').to_ascii_lowercase(), on))
            .collect(),
        https_port: args.mta_sts_port.unwrap_or(443),
        ..Default::default()
    }
}
