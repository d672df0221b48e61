//! The DNS record vectors of proto-spec §14 item 7:
//! `proto-spec/vectors/xpony-1-dns.json`. Each entry is one TXT record
//! as its character-strings, with the meaning §8.2 gives it. The
//! expectations are written here from the spec; the tests check that the
//! implementation (joining the strings as the resolver does, then parsing)
//! gives each one.

use super::super::keys::{DnsRecord, DnsRecordError, encode_key};
use super::{fixed_key, json_text, non_canonical};

/// One TXT record and what it must mean.
struct Record {
    name: &'static str,
    strings: Vec<String>,
    want: DnsRecord,
}

fn records() -> Vec<Record> {
    let key = fixed_key("server static").public();
    let next = fixed_key("server successor").public();
    let k = encode_key(&key);
    let n = encode_key(&next);
    let valid = |testing| DnsRecord::Key { key, testing };
    let invalid = DnsRecord::Invalid;
    let one = |text: String| vec![text];
    vec![
        Record {
            name: "example-of-section-8.2",
            strings: one(format!("v=XPONY1; k=x25519; p={k}")),
            want: valid(false),
        },
        Record {
            name: "minimal",
            strings: one(format!("v=XPONY1;p={k}")),
            want: valid(false),
        },
        Record {
            name: "several-character-strings",
            strings: vec![
                "v=XPONY1; k=x2".into(),
                format!("5519; p={}", &k[..20]),
                k[20..].to_string(),
            ],
            want: valid(false),
        },
        Record {
            name: "whitespace-in-p",
            strings: one(format!(
                "v=XPONY1; k=x25519; p={} {}\t{}",
                &k[..11],
                &k[11..30],
                &k[30..]
            )),
            want: valid(false),
        },
        Record {
            name: "whitespace-around-tags-and-trailing-semicolon",
            strings: one(format!(" v = XPONY1 ;\tp = {k} ;")),
            want: valid(false),
        },
        Record {
            name: "unknown-tag-ignored",
            strings: one(format!("v=XPONY1; n=next key soon; p={k}")),
            want: valid(false),
        },
        Record {
            name: "testing-flag",
            strings: one(format!("v=XPONY1; k=x25519; p={n}; t=y")),
            want: DnsRecord::Key {
                key: next,
                testing: true,
            },
        },
        Record {
            name: "testing-among-flags",
            strings: one(format!("v=XPONY1; p={n}; t=s:y")),
            want: DnsRecord::Key {
                key: next,
                testing: true,
            },
        },
        Record {
            name: "unknown-flag-ignored",
            strings: one(format!("v=XPONY1; p={k}; t=s")),
            want: valid(false),
        },
        Record {
            name: "other-txt-data",
            strings: one("v=spf1 -all".into()),
            want: DnsRecord::NotXpony,
        },
        Record {
            name: "v-not-first",
            strings: one(format!("p={k}; v=XPONY1")),
            want: DnsRecord::NotXpony,
        },
        Record {
            name: "other-version",
            strings: one(format!("v=XPONY2; p={k}")),
            want: DnsRecord::NotXpony,
        },
        Record {
            name: "version-in-lower-case",
            strings: one(format!("v=xpony1; p={k}")),
            want: DnsRecord::NotXpony,
        },
        Record {
            name: "empty",
            strings: one(String::new()),
            want: DnsRecord::NotXpony,
        },
        Record {
            name: "duplicated-tag",
            strings: one(format!("v=XPONY1; p={k}; p={n}")),
            want: invalid(DnsRecordError::Duplicate("p".into())),
        },
        Record {
            name: "missing-p",
            strings: one("v=XPONY1; k=x25519".into()),
            want: invalid(DnsRecordError::NoKey),
        },
        Record {
            name: "empty-p",
            strings: one("v=XPONY1; k=x25519; p=".into()),
            want: invalid(DnsRecordError::EmptyKey),
        },
        Record {
            name: "p-of-31-octets",
            strings: one(format!("v=XPONY1; p={}AA==", &k[..40])),
            want: invalid(DnsRecordError::BadKey),
        },
        Record {
            name: "p-not-base64",
            strings: one(format!("v=XPONY1; p={}!", &k[..43])),
            want: invalid(DnsRecordError::BadKey),
        },
        Record {
            name: "testing-flag-with-white-space-around-colons",
            strings: one(format!("v=XPONY1; p={n}; t = s : y ")),
            want: DnsRecord::Key {
                key: next,
                testing: true,
            },
        },
        Record {
            name: "white-space-inside-a-flag",
            strings: one(format!("v=XPONY1; p={n}; t=y s")),
            want: invalid(DnsRecordError::BadFlags),
        },
        Record {
            name: "empty-t",
            strings: one(format!("v=XPONY1; p={n}; t=")),
            want: invalid(DnsRecordError::BadFlags),
        },
        Record {
            name: "empty-flag",
            strings: one(format!("v=XPONY1; p={n}; t=y::s")),
            want: invalid(DnsRecordError::BadFlags),
        },
        Record {
            name: "p-without-padding",
            strings: one(format!("v=XPONY1; p={}", &k[..43])),
            want: invalid(DnsRecordError::BadKey),
        },
        Record {
            name: "p-non-canonical",
            strings: one(format!("v=XPONY1; p={}", non_canonical(&k))),
            want: invalid(DnsRecordError::BadKey),
        },
        Record {
            name: "key-type-in-upper-case",
            strings: one(format!("v=XPONY1; k=X25519; p={k}")),
            want: valid(false),
        },
        Record {
            name: "first-tag-well-formed-rest-not",
            strings: one(format!("v=XPONY1 ; p={k}; =x")),
            want: invalid(DnsRecordError::Syntax),
        },
        Record {
            name: "no-semicolon-after-v",
            strings: one(format!("v=XPONY1 p={k}")),
            want: DnsRecord::NotXpony,
        },
        Record {
            name: "first-tag-not-a-tag-spec",
            strings: one(format!("XPONY1; v=XPONY1; p={k}")),
            want: DnsRecord::NotXpony,
        },
        Record {
            name: "unknown-key-type",
            strings: one(format!("v=XPONY1; k=ed25519; p={k}")),
            want: invalid(DnsRecordError::KeyType("ed25519".into())),
        },
        Record {
            name: "tag-without-value",
            strings: one(format!("v=XPONY1; k; p={k}")),
            want: invalid(DnsRecordError::Syntax),
        },
        Record {
            name: "empty-tag-spec",
            strings: one(format!("v=XPONY1;; p={k}")),
            want: invalid(DnsRecordError::Syntax),
        },
    ]
}

/// The whole file as JSON text (stable field order).
pub fn dns_vectors() -> String {
    let mut out = String::from("{\n");
    out.push_str("  \"owner\": \"_xpony._tcp.mx.example.org.\",\n");
    out.push_str("  \"based_on\": \"xpony-1-handshake.json\",\n");
    out.push_str("  \"records\": [\n");
    let entries: Vec<String> = records()
        .into_iter()
        .map(|r| {
            let strings: Vec<String> = r
                .strings
                .iter()
                .map(|s| format!("\"{}\"", json_text(s.as_bytes())))
                .collect();
            let result = match &r.want {
                DnsRecord::Key { key, testing } => format!(
                    "\"result\": \"key\", \"key\": \"{}\", \"testing\": {testing}",
                    encode_key(key)
                ),
                DnsRecord::Invalid(why) => {
                    format!(
                        "\"result\": \"invalid\", \"why\": \"{}\"",
                        json_text(why.to_string().as_bytes())
                    )
                }
                DnsRecord::NotXpony => "\"result\": \"not-xpony\"".to_string(),
            };
            format!(
                "    {{\"name\": \"{}\", \"strings\": [{}], {result}}}",
                r.name,
                strings.join(", ")
            )
        })
        .collect();
    out.push_str(&entries.join(",\n"));
    out.push_str("\n  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::super::{check_stored, stored_json};
    use super::*;
    use crate::outbound::dns::join_character_strings;
    use crate::pony::keys::{decode_key, parse_dns_record};

    #[test]
    fn vectors_match_the_stored_file() {
        check_stored("xpony-1-dns.json", &dns_vectors());
    }

    /// Each record as the spec reads it (§8.2), against the code that
    /// reads TXT answers.
    #[test]
    fn the_implementation_reads_each_record_as_stated() {
        for r in records() {
            let text = join_character_strings(&r.strings);
            assert_eq!(parse_dns_record(&text), r.want, "{}: {text:?}", r.name);
        }
    }

    /// The same from the stored file, as a second implementation reads it.
    #[test]
    fn the_stored_records_read_as_stored() {
        let stored = stored_json("xpony-1-dns.json");
        let records = stored["records"].as_array().unwrap();
        assert_eq!(records.len(), super::records().len());
        for r in records {
            let strings: Vec<&str> = r["strings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap())
                .collect();
            let got = parse_dns_record(&join_character_strings(&strings));
            let name = &r["name"];
            match r["result"].as_str().unwrap() {
                "key" => {
                    let key = decode_key(r["key"].as_str().unwrap()).unwrap();
                    let testing = r["testing"].as_bool().unwrap();
                    assert_eq!(got, DnsRecord::Key { key, testing }, "{name}");
                }
                "invalid" => assert!(
                    matches!(&got, DnsRecord::Invalid(why) if why.to_string() == r["why"]),
                    "{name}: {got:?}"
                ),
                "not-xpony" => assert_eq!(got, DnsRecord::NotXpony, "{name}"),
                other => panic!("{name}: unknown result {other}"),
            }
        }
    }
}
