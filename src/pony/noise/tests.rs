//! The Noise implementation against the public vectors for
//! `Noise_XX_25519_ChaChaPoly_SHA256` (tests/vectors/noise/), against the
//! independent `snow` implementation in both roles, and against bad input.

use super::*;

#[derive(serde::Deserialize)]
struct VectorFile {
    vectors: Vec<Vector>,
}

#[derive(serde::Deserialize)]
struct Vector {
    init_prologue: String,
    init_static: String,
    init_ephemeral: String,
    resp_prologue: String,
    resp_static: String,
    resp_ephemeral: String,
    handshake_hash: Option<String>,
    messages: Vec<VectorMessage>,
}

#[derive(serde::Deserialize)]
struct VectorMessage {
    payload: String,
    ciphertext: String,
}

fn key(h: &str) -> Keypair {
    Keypair::from_secret(unhex(h).unwrap().try_into().unwrap())
}

fn b(h: &str) -> Vec<u8> {
    unhex(h).unwrap()
}

/// Runs one vector: both roles, every message compared byte for byte.
fn run_vector(v: &Vector) {
    let init = Initiator::new(
        &b(&v.init_prologue),
        key(&v.init_static),
        key(&v.init_ephemeral),
    );
    let resp = Responder::new(
        &b(&v.resp_prologue),
        key(&v.resp_static),
        key(&v.resp_ephemeral),
    );
    let m = &v.messages;

    let (init, c1) = init.write_message_1(&b(&m[0].payload)).unwrap();
    assert_eq!(hex(&c1), m[0].ciphertext, "message 1");
    let (resp, p1) = resp.read_message_1(&c1).unwrap();
    assert_eq!(hex(&p1), m[0].payload);

    let (resp, c2) = resp.write_message_2(&b(&m[1].payload)).unwrap();
    assert_eq!(hex(&c2), m[1].ciphertext, "message 2");
    let (init, p2) = init.read_message_2(&c2).unwrap();
    assert_eq!(hex(&p2), m[1].payload);
    assert_eq!(init.remote_static(), key(&v.resp_static).public());

    let (mut init, c3) = init.write_message_3(&b(&m[2].payload)).unwrap();
    assert_eq!(hex(&c3), m[2].ciphertext, "message 3");
    let (mut resp, p3) = resp.read_message_3(&c3).unwrap();
    assert_eq!(hex(&p3), m[2].payload);
    assert_eq!(resp.remote_static(), key(&v.init_static).public());

    if let Some(h) = &v.handshake_hash {
        assert_eq!(hex(&init.handshake_hash()), *h);
        assert_eq!(hex(&resp.handshake_hash()), *h);
    }
    // Transport messages alternate, responder first after XX's three.
    for (i, msg) in m.iter().enumerate().skip(3) {
        let (sender, receiver) = if i % 2 == 1 {
            (&mut resp, &mut init)
        } else {
            (&mut init, &mut resp)
        };
        let c = sender.encrypt(&b(&msg.payload)).unwrap();
        assert_eq!(hex(&c), msg.ciphertext, "transport message {i}");
        assert_eq!(hex(&receiver.decrypt(&c).unwrap()), msg.payload);
    }
}

fn vectors(name: &str) -> Vec<Vector> {
    let path = format!("{}/tests/vectors/noise/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let file: VectorFile = serde_json::from_str(&text).unwrap();
    assert!(!file.vectors.is_empty(), "{path} has no vectors");
    file.vectors
}

#[test]
fn cacophony_vectors() {
    for v in vectors("cacophony-xx.json") {
        run_vector(&v);
    }
}

#[test]
fn snow_vectors() {
    for v in vectors("snow-xx.json") {
        run_vector(&v);
    }
}

#[test]
fn noise_c_vectors() {
    for v in vectors("noise-c-xx.json") {
        run_vector(&v);
    }
}

fn pair(prologue: &[u8]) -> (Transport, Transport) {
    handshake_pair(prologue)
}

#[test]
fn tampered_truncated_replayed_and_reordered_frames_fail() {
    let (mut a, mut bb) = pair(b"p");
    let m0 = a.encrypt(b"first").unwrap();
    let m1 = a.encrypt(b"second").unwrap();

    let mut tampered = m0.clone();
    tampered[0] ^= 1;
    assert_eq!(bb.decrypt(&tampered), Err(NoiseError::Decrypt));
    assert_eq!(bb.decrypt(&m0[..m0.len() - 1]), Err(NoiseError::Decrypt));
    assert_eq!(bb.decrypt(&m0[..3]), Err(NoiseError::Decrypt));
    // Out of order: the second message first.
    assert_eq!(bb.decrypt(&m1), Err(NoiseError::Decrypt));
    // The failures did not move the receive nonce.
    assert_eq!(bb.recv_nonce(), 0);
    assert_eq!(bb.decrypt(&m0).unwrap(), b"first");
    // Replay.
    assert_eq!(bb.decrypt(&m0), Err(NoiseError::Decrypt));
    assert_eq!(bb.decrypt(&m1).unwrap(), b"second");
    assert_eq!(bb.recv_nonce(), 2);
}

#[test]
fn mismatched_prologue_fails_the_handshake() {
    let init = Initiator::new(
        b"EHLO with STARTTLS",
        Keypair::generate().unwrap(),
        Keypair::generate().unwrap(),
    );
    let resp = Responder::new(
        b"EHLO without",
        Keypair::generate().unwrap(),
        Keypair::generate().unwrap(),
    );
    let (init, m1) = init.write_message_1(b"").unwrap();
    let (resp, _) = resp.read_message_1(&m1).unwrap();
    let (_, m2) = resp.write_message_2(b"").unwrap();
    assert_eq!(init.read_message_2(&m2).err(), Some(NoiseError::Decrypt));
}

#[test]
fn nonce_limit_and_rekey() {
    let (mut a, mut bb) = pair(b"");
    a.set_send_nonce(u64::MAX);
    assert_eq!(a.encrypt(b"x"), Err(NoiseError::NonceExhausted));

    let (mut a, mut bb2) = pair(b"");
    std::mem::swap(&mut bb, &mut bb2);
    let before = a.encrypt(b"one").unwrap();
    assert_eq!(bb.decrypt(&before).unwrap(), b"one");
    a.rekey_send();
    let after = a.encrypt(b"two").unwrap();
    // Without the matching rekey the receiver cannot read it.
    assert_eq!(bb.decrypt(&after), Err(NoiseError::Decrypt));
    bb.rekey_recv();
    assert_eq!(bb.decrypt(&after).unwrap(), b"two");
    assert_eq!(
        (a.send_nonce(), bb.recv_nonce()),
        (2, 2),
        "rekey keeps the nonce"
    );
}

#[test]
fn bad_handshake_messages() {
    let resp = Responder::new(
        b"",
        Keypair::generate().unwrap(),
        Keypair::generate().unwrap(),
    );
    assert_eq!(
        resp.read_message_1(&[0u8; 10]).err(),
        Some(NoiseError::BadLength)
    );
    let init = Initiator::new(
        b"",
        Keypair::generate().unwrap(),
        Keypair::generate().unwrap(),
    );
    let (init, _) = init.write_message_1(b"").unwrap();
    assert_eq!(
        init.read_message_2(&[0u8; 40]).err(),
        Some(NoiseError::BadLength)
    );
    // A low-order point as the responder's ephemeral key.
    let init = Initiator::new(
        b"",
        Keypair::generate().unwrap(),
        Keypair::generate().unwrap(),
    );
    let (init, _) = init.write_message_1(b"").unwrap();
    let mut m2 = vec![0u8; 32 + 48 + 16];
    m2[0] = 0; // the all-zero point
    assert_eq!(init.read_message_2(&m2).err(), Some(NoiseError::WeakKey));
    let (mut a, _) = pair(b"");
    assert_eq!(a.encrypt(&vec![0u8; MAX_MESSAGE]), Err(NoiseError::TooLong));
}

/// Our initiator against snow's responder, and snow's initiator against
/// our responder, with payloads and transport messages both ways.
#[test]
fn interoperates_with_snow() {
    let params: snow::params::NoiseParams = PROTOCOL_NAME.parse().unwrap();
    let prologue = b"blackpony-interop";

    // Ours initiates.
    let snow_static = snow::Builder::new(params.clone())
        .generate_keypair()
        .unwrap();
    let mut theirs = snow::Builder::new(params.clone())
        .local_private_key(&snow_static.private)
        .unwrap()
        .prologue(prologue)
        .unwrap()
        .build_responder()
        .unwrap();
    let ours = Initiator::new(
        prologue,
        Keypair::generate().unwrap(),
        Keypair::generate().unwrap(),
    );
    let mut buf = vec![0u8; 65535];
    let (ours, m1) = ours.write_message_1(b"hello").unwrap();
    let n = theirs.read_message(&m1, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello");
    let n = theirs.write_message(b"from snow", &mut buf).unwrap();
    let (ours, p2) = ours.read_message_2(&buf[..n]).unwrap();
    assert_eq!(p2, b"from snow");
    assert_eq!(
        ours.remote_static().as_slice(),
        snow_static.public.as_slice()
    );
    let (mut ours, m3) = ours.write_message_3(b"done").unwrap();
    let n = theirs.read_message(&m3, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"done");
    let mut theirs = theirs.into_transport_mode().unwrap();
    let c = ours.encrypt(b"data to snow").unwrap();
    let n = theirs.read_message(&c, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"data to snow");
    let n = theirs.write_message(b"data from snow", &mut buf).unwrap();
    assert_eq!(ours.decrypt(&buf[..n]).unwrap(), b"data from snow");

    // Snow initiates.
    let snow_static = snow::Builder::new(params.clone())
        .generate_keypair()
        .unwrap();
    let mut theirs = snow::Builder::new(params)
        .local_private_key(&snow_static.private)
        .unwrap()
        .prologue(prologue)
        .unwrap()
        .build_initiator()
        .unwrap();
    let ours = Responder::new(
        prologue,
        Keypair::generate().unwrap(),
        Keypair::generate().unwrap(),
    );
    let n = theirs.write_message(b"", &mut buf).unwrap();
    let (ours, _) = ours.read_message_1(&buf[..n]).unwrap();
    let (ours, m2) = ours.write_message_2(b"payload 2").unwrap();
    let n = theirs.read_message(&m2, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"payload 2");
    let n = theirs.write_message(b"payload 3", &mut buf).unwrap();
    let (mut ours, p3) = ours.read_message_3(&buf[..n]).unwrap();
    assert_eq!(p3, b"payload 3");
    assert_eq!(
        ours.remote_static().as_slice(),
        snow_static.public.as_slice()
    );
    let mut theirs = theirs.into_transport_mode().unwrap();
    let n = theirs.write_message(b"to ours", &mut buf).unwrap();
    assert_eq!(ours.decrypt(&buf[..n]).unwrap(), b"to ours");
    let c = ours.encrypt(b"to snow").unwrap();
    let n = theirs.read_message(&c, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"to snow");
}
