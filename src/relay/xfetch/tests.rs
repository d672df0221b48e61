use super::*;
use crate::pony::keys::decode_key;
use serde_json::Value;

fn vector(name: &str) -> Value {
    let path = format!("{}/proto-spec/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn key_of(v: &Value) -> PublicKey {
    decode_key(v.as_str().unwrap()).unwrap()
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn octets(step: &Value) -> Vec<u8> {
    match (step.get("text"), step.get("hex")) {
        (Some(t), _) => t.as_str().unwrap().as_bytes().to_vec(),
        (_, Some(h)) => hex(h.as_str().unwrap()),
        _ => panic!("step without octets: {step}"),
    }
}

fn authorized(key: PublicKey) -> SessionFacts {
    SessionFacts {
        protection: Protection::Xpony(key),
        hello: true,
        in_transaction: false,
    }
}

/// A relay over an in-memory spool (oldest first): what the real one does
/// with the spool in `fetch_server`, without the I/O.
struct MemoryRelay {
    keys: FetchKeys,
    spool: Vec<(String, Vec<u8>)>,
    offered: Offered,
}

impl MemoryRelay {
    fn serve(&mut self, facts: &SessionFacts, line: &[u8], out: &mut Vec<u8>) {
        match check(&self.keys, facts, line) {
            Err(refusal) => refusal.reply.write_to(out),
            Ok(Request::Next) => {
                let ids: Vec<String> = self.spool.iter().map(|(id, _)| id.clone()).collect();
                match self.offered.pick(&ids) {
                    Some(id) => {
                        let sealed = &self.spool.iter().find(|(i, _)| *i == id).unwrap().1;
                        write_message(&id, sealed, out);
                    }
                    None => replies::fetch_empty().write_to(out),
                }
            }
            Ok(Request::Delete(id)) => {
                self.spool.retain(|(i, _)| *i != id);
                replies::fetch_deleted(&id).write_to(out);
            }
        }
    }
}

/// Splits client octets into command lines (without CRLF).
fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect()
}

fn event_of(v: &Value) -> FetchEvent {
    if let Some(id) = v.get("message") {
        FetchEvent::Message {
            id: id.as_str().unwrap().into(),
            sealed: hex(v["sealed_hex"].as_str().unwrap()),
        }
    } else if let Some(id) = v.get("deleted") {
        FetchEvent::Deleted {
            id: id.as_str().unwrap().into(),
        }
    } else if v.get("empty").is_some() {
        FetchEvent::Empty
    } else {
        FetchEvent::Bye
    }
}

/// fetch-1-session.json, relay side: every XFETCH line of the home side
/// gets exactly the relay's octets of the next step.
#[test]
fn session_vector_relay_side() {
    let v = vector("fetch-1-session.json");
    let keys = FetchKeys::new(
        v["fetch_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(key_of)
            .collect(),
    );
    let facts = authorized(key_of(&v["client_key"]));
    assert!(listed_in_ehlo(&keys, facts.protection));
    let mut relay = MemoryRelay {
        keys,
        spool: v["spool"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["id"].as_str().unwrap().to_string(),
                    hex(e["sealed_hex"].as_str().unwrap()),
                )
            })
            .collect(),
        offered: Offered::default(),
    };
    let steps = v["steps"].as_array().unwrap();
    let mut checked = 0;
    for pair in steps.chunks(2) {
        let (home, answer) = (&pair[0], &pair[1]);
        assert_eq!(home["from"], "home");
        if home.get("smtp").is_some() {
            continue;
        }
        let sent = octets(home);
        let mut out = Vec::new();
        for line in lines(&sent) {
            assert!(is_command(line));
            relay.serve(&facts, line, &mut out);
        }
        assert_eq!(
            out,
            octets(answer),
            "answer to {:?}",
            String::from_utf8_lossy(&sent)
        );
        checked += 1;
    }
    assert_eq!(checked, 3);
    assert!(relay.spool.is_empty());
}

/// fetch-1-session.json, home side: the client writes exactly the home
/// octets and reads the relay's octets as the listed events.
#[test]
fn session_vector_home_side() {
    let v = vector("fetch-1-session.json");
    let steps = v["steps"].as_array().unwrap();
    let ehlo = crate::smtp::Reply::parse(&octets(&steps[1]))
        .unwrap()
        .unwrap();
    let mut client = FetchClient::new(&EhloReply::parse(&ehlo), DEFAULT_MAX_SIZE).unwrap();
    let mut events = Vec::new();
    for pair in steps[2..].chunks(2) {
        let (home, answer) = (&pair[0], &pair[1]);
        for line in lines(&octets(home)) {
            match std::str::from_utf8(line).unwrap() {
                "XFETCH NEXT" => client.next(),
                "QUIT" => client.quit(),
                other => client.delete(other.strip_prefix("XFETCH DELETE ").unwrap()),
            }
        }
        assert_eq!(client.outgoing, octets(home));
        client.outgoing.clear();
        // Byte by byte: no event may depend on how the octets arrive.
        let mut got = Vec::new();
        for b in octets(answer) {
            client.receive(&[b]);
            while let Some(e) = client.poll().unwrap() {
                got.push(e);
            }
        }
        let want: Vec<FetchEvent> = answer["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(event_of)
            .collect();
        assert_eq!(got, want);
        events.extend(got);
    }
    assert!(!client.waiting());
    assert_eq!(events.last(), Some(&FetchEvent::Bye));
}

/// fetch-1-negative.json: each refused command gets exactly its reply, and
/// the accepted ones parse to their request.
#[test]
fn negative_vector_relay_side() {
    let v = vector("fetch-1-negative.json");
    for case in v["server_cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let keys = FetchKeys::new(
            case["fetch_keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(key_of)
                .collect(),
        );
        let protection = match case["channel"].as_str().unwrap() {
            "none" => Protection::Plain,
            "tls" => Protection::Tls,
            _ => Protection::Xpony(key_of(&case["client_key"])),
        };
        let facts = SessionFacts {
            protection,
            hello: case["ehlo"].as_bool().unwrap(),
            in_transaction: case["transaction"].as_bool().unwrap(),
        };
        let line = case["input_text"].as_str().unwrap().as_bytes();
        let refusal = check(&keys, &facts, line).expect_err(name);
        let want = Reply::new(
            case["reply"]["code"].as_u64().unwrap() as u16,
            case["reply"]["text"].as_str().unwrap(),
        );
        assert_eq!(refusal.reply, want, "{name}");
        // Only F4 carries a key to log, and it is the client's.
        assert_eq!(refusal.unauthorized.is_some(), want.code() == 535, "{name}");
    }
    for case in v["accepted"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let home = decode_key(v["keys"]["home static"]["public_base64"].as_str().unwrap()).unwrap();
        let keys = FetchKeys::new(vec![home]);
        let got = check(
            &keys,
            &authorized(home),
            case["input_text"].as_str().unwrap().as_bytes(),
        );
        let want = match case["request"].get("delete") {
            Some(id) => Request::Delete(id.as_str().unwrap().into()),
            None => Request::Next,
        };
        assert_eq!(got, Ok(want), "{name}");
    }
}

/// fetch-1-negative.json, home side: each bad reply gets its reaction, and
/// none yields a message.
#[test]
fn negative_vector_home_side() {
    let v = vector("fetch-1-negative.json");
    let caps = EhloReply::parse(&Reply::multiline(
        250,
        vec!["relay".into(), "XFETCH".into()],
    ));
    for case in v["client_cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mut client = FetchClient::new(&caps, DEFAULT_MAX_SIZE).unwrap();
        match case["sent"].as_str().unwrap() {
            "XFETCH NEXT" => client.next(),
            "" => {}
            sent => client.delete(sent.strip_prefix("XFETCH DELETE ").unwrap()),
        }
        client.receive(case["input_text"].as_str().unwrap().as_bytes());
        let got = client.poll();
        match case["reaction"].as_str().unwrap() {
            "fatal" => assert!(
                matches!(got, Err(FetchError::Protocol(_))),
                "{name}: {got:?}"
            ),
            "temporary" => assert!(
                matches!(&got, Err(e @ FetchError::Refused { .. }) if e.is_temporary()),
                "{name}: {got:?}"
            ),
            "key-refused" => assert!(
                matches!(&got, Err(e @ FetchError::KeyRefused(_)) if !e.is_temporary()),
                "{name}: {got:?}"
            ),
            "too-big" => assert!(
                matches!(got, Err(FetchError::TooBig { .. })),
                "{name}: {got:?}"
            ),
            "incomplete" => assert_eq!(got, Ok(None), "{name}"),
            other => panic!("{name}: unknown reaction {other}"),
        }
    }
}

#[test]
fn ids() {
    for good in [
        "a",
        "0",
        "1764734400.000000.5f3a9c1e7b2d4806.age",
        "A-b_c.9",
        &"z".repeat(128),
    ] {
        assert!(valid_id(good), "{good}");
    }
    for bad in [
        "",
        ".",
        "..",
        ".a",
        "-a",
        "_a",
        "a/b",
        "a b",
        "é",
        "a\0",
        &"z".repeat(129),
    ] {
        assert!(!valid_id(bad), "{bad:?}");
    }
}

#[test]
fn sizes() {
    for (text, want) in [
        ("0", Some(0)),
        ("37", Some(37)),
        ("18446744073709551615", Some(u64::MAX)),
        ("18446744073709551616", None),
        ("00", None),
        ("01", None),
        ("", None),
        ("+1", None),
        ("1 ", None),
        ("123456789012345678901", None),
    ] {
        assert_eq!(parse_size(text), want, "{text:?}");
    }
}

#[test]
fn keys_are_compared_whole() {
    let keys = FetchKeys::new(vec![[1; 32], [2; 32]]);
    assert!(keys.authorizes(&[2; 32]));
    let mut almost = [2u8; 32];
    almost[31] = 3;
    assert!(!keys.authorizes(&almost));
    assert!(!FetchKeys::default().authorizes(&[0; 32]));
    assert!(!listed_in_ehlo(
        &FetchKeys::default(),
        Protection::Xpony([1; 32])
    ));
    assert!(!listed_in_ehlo(&keys, Protection::Tls));
    assert!(!listed_in_ehlo(&keys, Protection::Plain));
}

#[test]
fn offered_skips_what_was_offered_and_sees_newcomers() {
    let mut offered = Offered::default();
    let list = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(offered.pick(&list(&["a", "b"])), Some("a".into()));
    // "a" kept by the home side (not deleted): "b" comes next.
    assert_eq!(offered.pick(&list(&["a", "b"])), Some("b".into()));
    assert_eq!(offered.pick(&list(&["a", "b"])), None);
    // A file that arrived during the session is offered after the others.
    assert_eq!(offered.pick(&list(&["a", "b", "c"])), Some("c".into()));
    assert_eq!(offered.pick(&list(&[])), None);
}

#[test]
fn a_client_without_the_keyword_does_not_start() {
    let caps = EhloReply::parse(&Reply::multiline(
        250,
        vec!["relay".into(), "PIPELINING".into()],
    ));
    assert_eq!(
        FetchClient::new(&caps, DEFAULT_MAX_SIZE).unwrap_err(),
        FetchError::NotOffered
    );
}

/// The two machines against each other: three sealed files, the second
/// kept by the home side (a temporary local failure), the others deleted;
/// the pipelined DELETE + NEXT of §5; a large file split at every size.
#[test]
fn client_and_relay_in_memory() {
    let home = [7u8; 32];
    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let mut relay = MemoryRelay {
        keys: FetchKeys::new(vec![home]),
        spool: vec![
            ("m1".into(), b"first\r\n.\r\n".to_vec()),
            ("m2".into(), Vec::new()),
            ("m3".into(), big.clone()),
        ],
        offered: Offered::default(),
    };
    let facts = authorized(home);
    let caps = EhloReply::parse(&Reply::multiline(
        250,
        vec!["relay".into(), "XFETCH".into()],
    ));
    let mut client = FetchClient::new(&caps, DEFAULT_MAX_SIZE).unwrap();
    client.next();
    let mut got = Vec::new();
    for round in 0..20 {
        assert!(round < 19, "no end");
        let sent = std::mem::take(&mut client.outgoing);
        let mut out = Vec::new();
        for line in lines(&sent) {
            if line == b"QUIT" {
                out.extend_from_slice(b"221 2.0.0 Bye\r\n");
            } else {
                relay.serve(&facts, line, &mut out);
            }
        }
        for chunk in out.chunks(1000 + round) {
            client.receive(chunk);
        }
        let mut done = false;
        while let Some(event) = client.poll().unwrap() {
            match &event {
                FetchEvent::Message { id, .. } if id == "m2" => client.next(),
                FetchEvent::Message { id, .. } => {
                    client.delete(id);
                    client.next();
                }
                FetchEvent::Empty => client.quit(),
                FetchEvent::Deleted { .. } => {}
                FetchEvent::Bye => done = true,
            }
            got.push(event);
        }
        if done {
            break;
        }
    }
    let sealed: Vec<(String, usize)> = got
        .iter()
        .filter_map(|e| match e {
            FetchEvent::Message { id, sealed } => Some((id.clone(), sealed.len())),
            _ => None,
        })
        .collect();
    assert_eq!(
        sealed,
        vec![
            ("m1".into(), 10),
            ("m2".into(), 0),
            ("m3".into(), big.len())
        ]
    );
    assert!(got.contains(&FetchEvent::Message {
        id: "m3".into(),
        sealed: big
    }));
    // Only the kept one is left.
    assert_eq!(relay.spool.len(), 1);
    assert_eq!(relay.spool[0].0, "m2");
}
