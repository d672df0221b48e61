//! `blackpony tlsrpt`: the daily SMTP TLS report (RFC 8460) of one policy
//! domain, from what delivery recorded in the state directory; written as
//! JSON, or sent to the domain's `rua=` destinations: mailed to `mailto:`
//! addresses through the outbound transport itself, POSTed to `https:`
//! URLs (RFC 8460 §5.3, §5.4).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::config::{OutboundFile, TlsrptFile};
use super::outbound::OutboundArgs;
use crate::log;
use crate::outbound::dkim::DkimSigner;
use crate::outbound::tlsrpt::{self, Report, Reporter, Rua, TlsReports};
use crate::outbound::tlsrpt_mail::ReportMailer;
use crate::outbound::tlsrpt_post::ReportPoster;
use crate::sysexits::Exit;

/// `blackpony tlsrpt --domain D [--date YYYY-MM-DD] [--out FILE] [--send]`
#[derive(Debug, Args)]
pub struct TlsrptArgs {
    /// The policy domain to report on: a recipient domain blackpony
    /// delivered to.
    #[arg(long, value_name = "DOMAIN", required_unless_present = "dkim_record")]
    pub domain: Option<String>,

    /// The UTC day to report [default: yesterday].
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub date: Option<String>,

    /// Write the JSON report to FILE [default: standard output, unless
    /// --send].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// Send the report (gzipped) to the `rua=` destinations of the
    /// domain's `_smtp._tls` TXT record: mailed to `mailto:` addresses by
    /// the outbound transport with the [outbound] settings (RFC 8460
    /// §5.3), POSTed as application/tlsrpt+gzip to `https:` URLs, whose
    /// certificates must verify (§5.4). Nothing is sent for a day without
    /// recorded sessions.
    #[arg(long)]
    pub send: bool,

    /// The report's `organization-name` [default: the EHLO name].
    #[arg(long, value_name = "NAME")]
    pub organization: Option<String>,

    /// The report's `contact-info`, also the sender of the report mail
    /// [default: postmaster@ the EHLO name].
    #[arg(long, value_name = "ADDRESS")]
    pub contact: Option<String>,

    /// PEM private key (RSA, 2048 bits or more, or Ed25519) that signs
    /// the report mail with DKIM: receivers MUST ignore a mailed report
    /// without a valid signature of the reporting domain (RFC 8460 §5.3).
    /// Make one with `openssl genpkey -algorithm RSA -pkeyopt
    /// rsa_keygen_bits:2048 -out tlsrpt-dkim.pem`.
    #[arg(long, value_name = "FILE", requires = "dkim_selector")]
    pub dkim_key: Option<PathBuf>,

    /// The DKIM selector (`s=`): the key is published at
    /// `<selector>._domainkey.<dkim-domain>`.
    #[arg(long, value_name = "NAME")]
    pub dkim_selector: Option<String>,

    /// The signing domain (`d=`) [default: the domain of --contact, the
    /// report's sender].
    #[arg(long, value_name = "DOMAIN")]
    pub dkim_domain: Option<String>,

    /// Print the DNS TXT record that publishes --dkim-key's public half
    /// (name and value) and exit.
    #[arg(long)]
    pub dkim_record: bool,

    #[command(flatten)]
    pub outbound: OutboundArgs,
}

pub fn run(
    args: TlsrptArgs,
    file: OutboundFile,
    own: TlsrptFile,
    runtime: &tokio::runtime::Runtime,
) -> ExitCode {
    ExitCode::from(runtime.block_on(report(args, file, own)))
}

async fn report(args: TlsrptArgs, file: OutboundFile, own: TlsrptFile) -> Exit {
    let settings = match super::outbound::merge_outbound(args.outbound, file) {
        Ok(s) => s,
        Err(e) => return fail(Exit::Usage, &e.to_string()),
    };
    let contact = args
        .contact
        .or(own.contact)
        .unwrap_or_else(|| format!("postmaster@{}", settings.helo_name));
    let signer = match (
        args.dkim_key.or(own.dkim_key),
        args.dkim_selector.or(own.dkim_selector),
    ) {
        (Some(key), Some(selector)) => {
            let domain = args
                .dkim_domain
                .or(own.dkim_domain)
                .or_else(|| contact.rsplit_once('@').map(|(_, d)| d.to_string()))
                .unwrap_or_default();
            match DkimSigner::load(&key, &domain, &selector) {
                Ok(s) => Some(s),
                Err(e) => return fail(Exit::Config, &format!("--dkim-key: {e}")),
            }
        }
        (Some(_), None) => {
            return fail(Exit::Config, "--dkim-key needs --dkim-selector");
        }
        (None, _) => None,
    };
    if args.dkim_record {
        let Some(signer) = signer else {
            return fail(
                Exit::Usage,
                "--dkim-record needs --dkim-key and --dkim-selector",
            );
        };
        let (name, value) = signer.dns_record();
        println!("{name}. IN TXT \"{value}\"");
        return Exit::Ok;
    }
    let asked = args.domain.unwrap_or_default();
    let domain = asked.trim_end_matches('.').to_ascii_lowercase();
    if domain.is_empty() || domain.contains(['/', ' ', '@']) {
        return fail(
            Exit::Usage,
            &format!("--domain {asked:?} is not a domain name"),
        );
    }
    let day = args.date.unwrap_or_else(tlsrpt::yesterday);
    if tlsrpt::parse_day(&day).is_none() {
        return fail(
            Exit::Usage,
            &format!("--date {day:?} is not a day (YYYY-MM-DD)"),
        );
    }
    let reporter = Reporter {
        organization: args
            .organization
            .or(own.organization)
            .unwrap_or_else(|| settings.helo_name.clone()),
        contact,
        submitter: settings.helo_name.clone(),
    };
    let reports = TlsReports::new(settings.state_dir.as_deref());
    let (records, skipped) = match reports.read_day(&domain, &day) {
        Ok(r) => r,
        Err(e) => return fail(Exit::IoErr, &e.to_string()),
    };
    if skipped > 0 {
        log!("warning: tlsrpt: {domain} {day}: {skipped} unreadable records skipped");
    }
    let Some(report) = Report::build(&reporter, &domain, &day, &records) else {
        return fail(Exit::Usage, &format!("--date {day:?} is not a day"));
    };
    let json = report.to_json();
    match &args.out {
        Some(path) => {
            if let Err(e) = std::fs::write(path, format!("{json}\n")) {
                return fail(Exit::CantCreat, &format!("{}: {e}", path.display()));
            }
        }
        None if !args.send => println!("{json}"),
        None => {}
    }
    if !args.send {
        return Exit::Ok;
    }
    if report.is_empty() {
        log!("tlsrpt: domain={domain} day={day} sessions=0: nothing to report, nothing sent");
        println!("no sessions recorded for {domain} on {day}: no report sent");
        return Exit::Ok;
    }
    send(&settings, &reporter, &report, &domain, signer.as_ref()).await
}

/// Sends `report` to each destination of the domain's reporting policy:
/// mail through the outbound transport, HTTPS POST. The exit status is the
/// mail's (as `deliver`'s), or temporary failure when a POST failed.
async fn send(
    settings: &super::outbound::OutboundSettings,
    reporter: &Reporter,
    report: &Report,
    domain: &str,
    signer: Option<&DkimSigner>,
) -> Exit {
    let deliverer = match settings.deliverer() {
        Ok(d) => d,
        Err(e) => return fail(Exit::TempFail, &e),
    };
    let mut mailer = None;
    let name = tlsrpt::policy_name(domain);
    let txts = match deliverer.resolver.txt(&name).await {
        Ok((_, crate::outbound::dns::Dnssec::Bogus)) => {
            return fail(
                Exit::TempFail,
                &format!("{name}: DNSSEC validation failed (bogus answer)"),
            );
        }
        Ok((txts, _)) => txts,
        Err(e) => return fail(Exit::TempFail, &e.to_string()),
    };
    let destinations = match tlsrpt::parse_policy_record(&txts) {
        Ok(d) => d,
        Err(why) => {
            return fail(
                Exit::Unavailable,
                &format!("{name}: {why}: {domain} takes no TLS reports"),
            );
        }
    };
    let mut results = Vec::new();
    let mut posted = Vec::new();
    for rua in &destinations {
        let to = match rua {
            Rua::Mailto(to) => to,
            Rua::Https(url) => {
                let result = post(&deliverer, report, url).await;
                match &result {
                    Ok(status) => log!(
                        "tlsrpt: domain={domain} report-id={} rua={url} status={status}",
                        report.report_id
                    ),
                    Err(why) => log!(
                        "tlsrpt: domain={domain} report-id={} rua={url} failed ({why})",
                        report.report_id
                    ),
                }
                posted.push(result);
                continue;
            }
            Rua::Other(url) => {
                log!(
                    "tlsrpt: domain={domain} rua={url} skipped (only mailto: and https: are supported)"
                );
                continue;
            }
        };
        let now = std::time::SystemTime::now();
        let message = tlsrpt::report_message(report, reporter, &reporter.contact, to, now);
        let (message, dkim) = match signer {
            Some(signer) => match signer.sign(&message, tlsrpt::unix_now()) {
                Ok(signed) => (signed, format!("d={}", signer.domain())),
                Err(e) => return fail(Exit::TempFail, &format!("DKIM signing: {e}")),
            },
            None => {
                log!(
                    "warning: tlsrpt: domain={domain} rua=mailto:{to}: the report mail is not DKIM-signed, so receivers ignore it (RFC 8460 §5.3): set --dkim-key and --dkim-selector"
                );
                (message, "none".to_string())
            }
        };
        let envelope = crate::smtp::Envelope {
            sender: reporter.contact.clone(),
            recipients: vec![to.clone()],
        };
        let mailer = match &mut mailer {
            Some(m) => m,
            None => match settings
                .deliverer()
                .and_then(|a| Ok(ReportMailer::new(a, settings.deliverer()?)))
            {
                Ok(m) => mailer.insert(m),
                Err(e) => return fail(Exit::TempFail, &e),
            },
        };
        let statuses = mailer.deliver(&envelope, &message).await;
        for s in &statuses {
            log!(
                "tlsrpt: domain={domain} report-id={} rua=mailto:{to} dkim={dkim} dsn={}{}",
                report.report_id,
                s.dsn(),
                if s.level == crate::outbound::SecurityLevel::Plaintext {
                    " tls=none"
                } else {
                    ""
                }
            );
        }
        results.extend(statuses);
    }
    if results.is_empty() && posted.is_empty() {
        return fail(
            Exit::Unavailable,
            &format!("{name}: no mailto: or https: destination; no report sent"),
        );
    }
    let mail = (!results.is_empty()).then(|| crate::outbound::exit::summarize(&results));
    let (code, line) = match (mail, posted.iter().find_map(|p| p.as_ref().err())) {
        // A mail deferred says so first (as `deliver` would).
        (Some((Exit::TempFail, line)), _) => (Exit::TempFail, line),
        (_, Some(why)) => (Exit::TempFail, format!("4.0.0 {why}")),
        (Some(summary), None) => summary,
        (None, None) => (
            Exit::Ok,
            format!(
                "2.0.0 report posted to {} https: destination(s)",
                posted.len()
            ),
        ),
    };
    println!("{line}");
    code
}

/// POSTs the gzipped report to an `https:` destination (RFC 8460 §5.4).
async fn post(
    deliverer: &crate::outbound::Deliverer,
    report: &Report,
    url: &str,
) -> Result<u16, String> {
    let poster = ReportPoster::new(deliverer.resolver.clone(), &deliverer.tls)?;
    poster
        .post(url, tlsrpt::gzip(report.to_json().as_bytes()))
        .await
}

fn fail(code: Exit, message: &str) -> Exit {
    eprintln!("blackpony tlsrpt: {message}");
    code
}
