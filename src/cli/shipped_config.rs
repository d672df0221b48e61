//! The shipped config file (`packaging/etc/blackpony.toml`, installed as
//! `/etc/blackpony/blackpony.toml`) against the definitions it documents, so
//! the two cannot drift: every key the file parser accepts is in the shipped
//! file (set, or commented out as `# key = value`) and every key there is
//! one the parser accepts, with a valid value; every flag of a role has its
//! key, and the other way round, save the few listed below.
//!
//! A new section (`[seal]`, `[fetch]`, …) fails `every_section_is_checked`
//! until it gets a row in [`sections`] and its keys in the shipped file.

use std::collections::BTreeSet;

use clap::CommandFactory;
use serde::de::{self, DeserializeOwned, Visitor};

use super::Cli;
use super::config::{FileConfig, InboundFile, OutboundFile, TlsrptFile};
use super::fetch::FetchFile;
use super::seal::SealFile;

const SHIPPED: &str = include_str!("../../packaging/etc/blackpony.toml");

/// One section of the file: its keys (the serde struct's fields), the
/// subcommand whose flags set the same things, and the exceptions.
struct Section {
    name: &'static str,
    keys: Vec<&'static str>,
    subcommand: &'static str,
    /// Flags of the subcommand that are not settings of this section.
    flag_only: &'static [&'static str],
    /// Keys that have no flag (or are a table of their own).
    file_only: &'static [&'static str],
    /// A subcommand whose flags this one takes as well (`tlsrpt` takes
    /// every outbound flag): those are another section's keys.
    inherits: Option<&'static str>,
}

fn sections() -> Vec<Section> {
    vec![
        Section {
            name: "inbound",
            keys: fields::<InboundFile>(),
            subcommand: "inbound",
            flag_only: &[],
            file_only: &[],
            inherits: None,
        },
        Section {
            name: "outbound",
            keys: fields::<OutboundFile>(),
            // `lmtp` has exactly the settings shared by every outbound mode.
            subcommand: "lmtp",
            flag_only: &[],
            // max_message_size: per installation, not per call; domains: the
            // [outbound.domains] table.
            // max_connections, max_message_memory: flags of `blackpony
            // outbound` (the server) only.
            // mta_sts_domains: the [outbound.mta_sts_domains] table.
            file_only: &[
                "max_message_size",
                "domains",
                "max_connections",
                "max_message_memory",
                "mta_sts_domains",
            ],
            inherits: None,
        },
        Section {
            name: "seal",
            keys: fields::<SealFile>(),
            subcommand: "seal",
            // The repeatable flags are singular, their lists plural.
            flag_only: &["domain", "recipient-key", "mailbox-key", "fetch-key"],
            file_only: &["domains", "recipient_keys", "mailbox_keys", "fetch_keys"],
            inherits: None,
        },
        Section {
            name: "fetch",
            keys: fields::<FetchFile>(),
            subcommand: "fetch",
            flag_only: &[],
            // max_size: per installation, like max_message_size.
            file_only: &["max_size"],
            inherits: None,
        },
        Section {
            name: "tlsrpt",
            keys: fields::<TlsrptFile>(),
            subcommand: "tlsrpt",
            // What one run is about, and the one-off record print.
            flag_only: &["domain", "date", "out", "send", "dkim-record"],
            file_only: &[],
            // The [outbound] settings deliver the report mail.
            inherits: Some("lmtp"),
        },
    ]
}

/// The field names a serde struct accepts, read from what its derived
/// `Deserialize` asks a deserializer for (and then stopped).
fn fields<T: DeserializeOwned>() -> Vec<&'static str> {
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("stop")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    struct Probe<'a>(&'a mut Vec<&'static str>);
    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0.extend(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut names = Vec::new();
    let _ = T::deserialize(Probe(&mut names));
    assert!(!names.is_empty(), "not a struct with named fields");
    names
}

/// A commented-out setting or table header: `# key = …`, `# "x" = …`, `# [t]`.
fn commented_setting(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("# ")?;
    let key_end = rest.find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()));
    let is_key = rest.starts_with(|c: char| c.is_ascii_lowercase())
        && key_end.is_some_and(|end| rest[end..].trim_start().starts_with('='));
    let is_quoted_key = rest.starts_with('"') && rest.contains("\" = ");
    let is_table = rest.starts_with('[') && rest.trim_end().ends_with(']');
    (is_key || is_quoted_key || is_table).then_some(rest)
}

/// The shipped file with every commented-out setting switched on.
fn uncommented() -> String {
    SHIPPED
        .lines()
        .map(|line| commented_setting(line).unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The keys the shipped file mentions per table (`inbound`, `outbound`,
/// `outbound.domains`), set or commented out; quoted keys are left out.
fn mentioned() -> Vec<(String, String)> {
    let mut table = String::new();
    let mut found = Vec::new();
    for line in uncommented().lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = name.to_string();
            if let Some((parent, child)) = name.rsplit_once('.') {
                found.push((parent.to_string(), child.to_string()));
            }
        } else if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            if !key.is_empty() && !key.starts_with('#') && !key.starts_with('"') {
                found.push((table.clone(), key.to_string()));
            }
        }
    }
    found
}

#[test]
fn every_section_is_checked() {
    let checked: BTreeSet<&str> = sections().iter().map(|s| s.name).collect();
    let parsed: BTreeSet<&str> = fields::<FileConfig>().into_iter().collect();
    assert_eq!(
        parsed, checked,
        "a section of the config file has no row in shipped_config::sections(): add one, \
         and its keys to packaging/etc/blackpony.toml"
    );
}

#[test]
fn shipped_file_parses_with_every_setting_switched_on() {
    // Duplicate keys are a TOML error, so each setting is there exactly once.
    if let Err(e) = FileConfig::parse(&uncommented()) {
        panic!("packaging/etc/blackpony.toml, commented settings included: {e}");
    }
    FileConfig::parse(SHIPPED).expect("packaging/etc/blackpony.toml as shipped");
}

#[test]
fn shipped_file_has_every_key_and_no_other() {
    let mentioned = mentioned();
    for section in sections() {
        let in_file: BTreeSet<&str> = mentioned
            .iter()
            .filter(|(t, _)| t == section.name)
            .map(|(_, k)| k.as_str())
            .collect();
        let parsed: BTreeSet<&str> = section.keys.iter().copied().collect();
        let missing: Vec<_> = parsed.difference(&in_file).collect();
        let unknown: Vec<_> = in_file.difference(&parsed).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "[{}] in packaging/etc/blackpony.toml: missing {missing:?}, not parsed {unknown:?}",
            section.name
        );
    }
}

#[test]
fn every_flag_has_its_key() {
    let cli = Cli::command();
    for section in sections() {
        let sub = cli
            .find_subcommand(section.subcommand)
            .unwrap_or_else(|| panic!("no subcommand {}", section.subcommand));
        let inherited: BTreeSet<&str> = section
            .inherits
            .and_then(|name| cli.find_subcommand(name))
            .map(|other| other.get_arguments().filter_map(|a| a.get_long()).collect())
            .unwrap_or_default();
        // --no-trace-header is `trace_header = false`, --no-xpony `xpony = false`.
        let flags: BTreeSet<String> = sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !a.is_global_set())
            .filter_map(|a| a.get_long())
            .filter(|l| !matches!(*l, "help" | "version"))
            .filter(|l| !section.flag_only.contains(l) && !inherited.contains(l))
            .map(|l| l.trim_start_matches("no-").replace('-', "_"))
            .collect();
        let keys: BTreeSet<String> = section
            .keys
            .iter()
            .filter(|k| !section.file_only.contains(k))
            .map(|k| k.to_string())
            .collect();
        assert_eq!(
            flags, keys,
            "`blackpony {}` flags vs [{}] keys",
            section.subcommand, section.name
        );
    }
}

/// The checks above catch what they are for.
#[test]
fn drift_is_detected() {
    assert_eq!(
        commented_setting("# tls_backoff = 300"),
        Some("tls_backoff = 300")
    );
    assert_eq!(
        commented_setting("# [outbound.domains]"),
        Some("[outbound.domains]")
    );
    assert_eq!(
        commented_setting("# \"a.example\" = \"verify\""),
        Some("\"a.example\" = \"verify\"")
    );
    assert_eq!(commented_setting("#   proxy-v2  Postfix: x = y"), None);
    assert_eq!(commented_setting("# state_dir and defer when"), None);
    assert_eq!(commented_setting("# without it xpony = false"), None);
    assert!(fields::<InboundFile>().contains(&"backend_command"));
    assert!(FileConfig::parse("[inbound]\nno_such_key = 1\n").is_err());
}
