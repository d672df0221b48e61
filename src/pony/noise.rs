//! `Noise_XX_25519_ChaChaPoly_SHA256` (the Noise Protocol Framework,
//! revision 34), sans-IO, with the handshake as a chain of states that
//! consume themselves.
//!
//! ```text
//! XX:
//!   -> e
//!   <- e, ee, s, es
//!   -> s, se
//! ```
//!
//! XX suits SMTP between strangers: no key is needed in advance, and the
//! initiator (the SMTP client) learns the responder's static key from
//! message 2 and can check it against a pin or a DNS key *before* it sends
//! its own static key in message 3 ([`InitiatorAwaitingConfirm`]).
//!
//! Randomness is injected: each constructor takes the ephemeral private key,
//! so the state machine is deterministic (test vectors) and the caller owns
//! the random source.
//!
//! Section numbers refer to the Noise specification, revision 34.
//!
//! This file is the key pair, the handshake's states and the transport;
//! beneath them, `cipher.rs` holds the CipherState and SymmetricState
//! (§5.1, §5.2) and `suite.rs` the protocol's name, sizes and error.

use std::sync::Arc;

use aws_lc_rs::agreement::{self, X25519};
use aws_lc_rs::encoding::{AsBigEndian, Curve25519SeedBin};
use zeroize::{Zeroize, Zeroizing};

pub use self::cipher::CipherState;
use self::cipher::SymmetricState;
use self::suite::TAG_LEN;
pub use self::suite::{KEY_LEN, MAX_MESSAGE, NoiseError, PROTOCOL_NAME};

mod cipher;
mod suite;
#[cfg(test)]
mod tests;

/// An X25519 key pair. The private half lives in aws-lc's key object,
/// which is cleansed when freed.
///
/// Why aws-lc-rs and not x25519-dalek or ring (docs/ARCHITECTURE.md, "XPONY
/// cryptography"): aws-lc's X25519 (s2n-bignum, ADX/BMI2 with a portable
/// fallback chosen at run time) costs about 2.5 times less than
/// x25519-dalek's ladder, and XX needs six of them per handshake; ring's
/// X25519 is as fast but only for ephemeral keys used once, while XX uses
/// each ephemeral key twice (ee and es/se) and the static key once per
/// handshake.
pub struct Keypair {
    /// Shared by clones: a server clones its static key for every
    /// connection, and aws-lc's key is never changed after it is made.
    secret: Arc<agreement::PrivateKey>,
    public: [u8; KEY_LEN],
}

impl Keypair {
    /// The key pair for a 32-byte private key.
    pub fn from_secret(secret: [u8; KEY_LEN]) -> Self {
        let mut secret_bytes = Zeroizing::new(secret);
        // aws-lc takes any 32 bytes as an X25519 private key (clamping is
        // part of the scalar multiplication, RFC 7748 §5), so this cannot
        // fail but for memory; then the process could not go on anyway.
        let key = agreement::PrivateKey::from_private_key(&X25519, secret_bytes.as_ref())
            .expect("aws-lc accepts any 32 bytes as an X25519 private key");
        secret_bytes.zeroize();
        let mut public = [0u8; KEY_LEN];
        let computed = key
            .compute_public_key()
            .expect("aws-lc computes the public half of an X25519 key");
        public.copy_from_slice(computed.as_ref());
        Keypair {
            secret: Arc::new(key),
            public,
        }
    }

    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(bytes.as_mut())?;
        Ok(Self::from_secret(*bytes))
    }

    pub fn public(&self) -> [u8; KEY_LEN] {
        self.public
    }

    /// The private key, for writing a key file.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        let seed: Result<Curve25519SeedBin<'static>, _> = self.secret.as_be_bytes();
        // The raw private key of an X25519 key made from 32 bytes is those
        // 32 bytes ("big-endian" is aws-lc-rs' name for its raw encoding).
        if let Ok(seed) = seed
            && seed.as_ref().len() == KEY_LEN
        {
            out.copy_from_slice(seed.as_ref());
        }
        out
    }

    /// DH(self, their_public) (§4.1), refusing an all-zero result: aws-lc's
    /// X25519 fails on it (a low-order point, RFC 7748 §6.1), and that is
    /// the only way it fails for 32 bytes of input.
    fn dh(&self, their_public: &[u8; KEY_LEN]) -> Result<Zeroizing<[u8; KEY_LEN]>, NoiseError> {
        let peer = agreement::UnparsedPublicKey::new(&X25519, their_public);
        agreement::agree(&self.secret, peer, NoiseError::WeakKey, |shared| {
            let mut out = Zeroizing::new([0u8; KEY_LEN]);
            if shared.len() != KEY_LEN {
                return Err(NoiseError::WeakKey);
            }
            out.copy_from_slice(shared);
            Ok(out)
        })
    }
}

impl Clone for Keypair {
    /// Shares the private key and copies the public one: recomputing it
    /// would cost a base-point multiplication, and a server clones its
    /// static key for every connection.
    fn clone(&self) -> Self {
        Keypair {
            secret: Arc::clone(&self.secret),
            public: self.public,
        }
    }
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keypair {{ public: {} }}", hex(&self.public))
    }
}

/// Appends `key` and mixes it into h: the `e` token (§5.3), and the plain
/// part of `s` before a key is set.
fn write_e(sym: &mut SymmetricState, e: &Keypair, out: &mut Vec<u8>) {
    out.extend_from_slice(&e.public);
    sym.mix_hash(&e.public);
}

fn read_key(message: &[u8], at: &mut usize, len: usize) -> Result<Vec<u8>, NoiseError> {
    let end = at.checked_add(len).ok_or(NoiseError::BadLength)?;
    let bytes = message.get(*at..end).ok_or(NoiseError::BadLength)?.to_vec();
    *at = end;
    Ok(bytes)
}

/// A handshake message is at least `min` bytes (its keys and tags) and at
/// most 65535.
fn check_length(message: &[u8], min: usize) -> Result<(), NoiseError> {
    if message.len() > MAX_MESSAGE {
        Err(NoiseError::TooLong)
    } else if message.len() < min {
        Err(NoiseError::BadLength)
    } else {
        Ok(())
    }
}

fn key32(bytes: &[u8]) -> Result<[u8; KEY_LEN], NoiseError> {
    bytes.try_into().map_err(|_| NoiseError::BadLength)
}

/// The payload of a handshake message: encrypted if a key is set.
fn write_payload(
    sym: &mut SymmetricState,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), NoiseError> {
    let from = out.len();
    out.extend_from_slice(payload);
    sym.encrypt_and_hash(out, from)?;
    if out.len() > MAX_MESSAGE {
        return Err(NoiseError::TooLong);
    }
    Ok(())
}

fn read_payload(sym: &mut SymmetricState, rest: &[u8]) -> Result<Vec<u8>, NoiseError> {
    let mut buf = rest.to_vec();
    sym.decrypt_and_hash(&mut buf)?;
    Ok(buf)
}

/// The initiator before message 1.
pub struct Initiator {
    sym: SymmetricState,
    s: Keypair,
    e: Keypair,
}

impl std::fmt::Debug for InitiatorAwaitingResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InitiatorAwaitingResponse")
    }
}

impl std::fmt::Debug for InitiatorAwaitingConfirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "InitiatorAwaitingConfirm {{ remote_static: {} }}",
            hex(&self.rs)
        )
    }
}

/// The initiator after message 1, waiting for message 2.
pub struct InitiatorAwaitingResponse {
    sym: SymmetricState,
    s: Keypair,
    e: Keypair,
}

/// The initiator after message 2: it knows the responder's static key and
/// decides (pin, DNS key) whether to go on with message 3.
pub struct InitiatorAwaitingConfirm {
    sym: SymmetricState,
    s: Keypair,
    re: [u8; KEY_LEN],
    rs: [u8; KEY_LEN],
}

/// The responder before message 1.
pub struct Responder {
    sym: SymmetricState,
    s: Keypair,
    e: Keypair,
}

/// The responder after message 1, ready to write message 2.
pub struct ResponderReady {
    sym: SymmetricState,
    s: Keypair,
    e: Keypair,
    re: [u8; KEY_LEN],
}

impl std::fmt::Debug for ResponderAwaitingFinish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponderAwaitingFinish")
    }
}

/// The responder after message 2, waiting for message 3.
pub struct ResponderAwaitingFinish {
    sym: SymmetricState,
    e: Keypair,
}

impl Initiator {
    /// `s` is our static key, `e` a fresh ephemeral key, `prologue` the
    /// data both sides must agree on (§6).
    pub fn new(prologue: &[u8], s: Keypair, e: Keypair) -> Self {
        Initiator {
            sym: SymmetricState::initialize(prologue),
            s,
            e,
        }
    }

    /// Message 1: `-> e`, then the payload (in clear: no key yet).
    pub fn write_message_1(
        mut self,
        payload: &[u8],
    ) -> Result<(InitiatorAwaitingResponse, Vec<u8>), NoiseError> {
        let mut out = Vec::with_capacity(KEY_LEN + payload.len());
        write_e(&mut self.sym, &self.e, &mut out);
        write_payload(&mut self.sym, payload, &mut out)?;
        Ok((
            InitiatorAwaitingResponse {
                sym: self.sym,
                s: self.s,
                e: self.e,
            },
            out,
        ))
    }
}

impl InitiatorAwaitingResponse {
    /// Message 2: `<- e, ee, s, es`; returns the decrypted payload.
    pub fn read_message_2(
        mut self,
        message: &[u8],
    ) -> Result<(InitiatorAwaitingConfirm, Vec<u8>), NoiseError> {
        check_length(message, KEY_LEN + KEY_LEN + TAG_LEN + TAG_LEN)?;
        let mut at = 0;
        let re = key32(&read_key(message, &mut at, KEY_LEN)?)?;
        self.sym.mix_hash(&re);
        let ee = self.e.dh(&re)?;
        self.sym.mix_key(ee.as_ref());
        let mut rs = read_key(message, &mut at, KEY_LEN + TAG_LEN)?;
        self.sym.decrypt_and_hash(&mut rs)?;
        let rs = key32(&rs)?;
        let es = self.e.dh(&rs)?;
        self.sym.mix_key(es.as_ref());
        let payload = read_payload(&mut self.sym, &message[at..])?;
        Ok((
            InitiatorAwaitingConfirm {
                sym: self.sym,
                s: self.s,
                re,
                rs,
            },
            payload,
        ))
    }
}

impl InitiatorAwaitingConfirm {
    /// The responder's static key, to check before going on.
    pub fn remote_static(&self) -> [u8; KEY_LEN] {
        self.rs
    }

    /// The handshake hash so far (binds everything up to message 2).
    pub fn handshake_hash(&self) -> [u8; KEY_LEN] {
        self.sym.h
    }

    /// Message 3: `-> s, se`; the handshake is complete.
    pub fn write_message_3(mut self, payload: &[u8]) -> Result<(Transport, Vec<u8>), NoiseError> {
        let mut out = Vec::with_capacity(KEY_LEN + TAG_LEN + payload.len() + TAG_LEN);
        let from = out.len();
        out.extend_from_slice(&self.s.public);
        self.sym.encrypt_and_hash(&mut out, from)?;
        let se = self.s.dh(&self.re)?;
        self.sym.mix_key(se.as_ref());
        write_payload(&mut self.sym, payload, &mut out)?;
        let (send, recv, hash) = self.sym.split();
        Ok((Transport::new(send, recv, hash, self.rs), out))
    }
}

impl Responder {
    pub fn new(prologue: &[u8], s: Keypair, e: Keypair) -> Self {
        Responder {
            sym: SymmetricState::initialize(prologue),
            s,
            e,
        }
    }

    /// Message 1: `-> e`; returns the payload.
    pub fn read_message_1(
        mut self,
        message: &[u8],
    ) -> Result<(ResponderReady, Vec<u8>), NoiseError> {
        check_length(message, KEY_LEN)?;
        let mut at = 0;
        let re = key32(&read_key(message, &mut at, KEY_LEN)?)?;
        self.sym.mix_hash(&re);
        let payload = read_payload(&mut self.sym, &message[at..])?;
        Ok((
            ResponderReady {
                sym: self.sym,
                s: self.s,
                e: self.e,
                re,
            },
            payload,
        ))
    }
}

impl ResponderReady {
    /// Message 2: `<- e, ee, s, es`.
    pub fn write_message_2(
        mut self,
        payload: &[u8],
    ) -> Result<(ResponderAwaitingFinish, Vec<u8>), NoiseError> {
        let mut out = Vec::with_capacity(2 * KEY_LEN + 2 * TAG_LEN + payload.len());
        write_e(&mut self.sym, &self.e, &mut out);
        let ee = self.e.dh(&self.re)?;
        self.sym.mix_key(ee.as_ref());
        let from = out.len();
        out.extend_from_slice(&self.s.public);
        self.sym.encrypt_and_hash(&mut out, from)?;
        let es = self.s.dh(&self.re)?;
        self.sym.mix_key(es.as_ref());
        write_payload(&mut self.sym, payload, &mut out)?;
        Ok((
            ResponderAwaitingFinish {
                sym: self.sym,
                e: self.e,
            },
            out,
        ))
    }
}

impl ResponderAwaitingFinish {
    /// Message 3: `-> s, se`; returns the transport, the payload, and (in
    /// the transport) the initiator's static key.
    pub fn read_message_3(mut self, message: &[u8]) -> Result<(Transport, Vec<u8>), NoiseError> {
        check_length(message, KEY_LEN + TAG_LEN + TAG_LEN)?;
        let mut at = 0;
        let mut rs = read_key(message, &mut at, KEY_LEN + TAG_LEN)?;
        self.sym.decrypt_and_hash(&mut rs)?;
        let rs = key32(&rs)?;
        let se = self.e.dh(&rs)?;
        self.sym.mix_key(se.as_ref());
        let payload = read_payload(&mut self.sym, &message[at..])?;
        let (recv, send, hash) = self.sym.split();
        Ok((Transport::new(send, recv, hash, rs), payload))
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Transport {{ remote_static: {} }}",
            hex(&self.remote_static)
        )
    }
}

/// The transport phase (§5.2 Split): one cipher each way.
pub struct Transport {
    send: CipherState,
    recv: CipherState,
    handshake_hash: [u8; KEY_LEN],
    remote_static: [u8; KEY_LEN],
}

impl Transport {
    fn new(
        send: CipherState,
        recv: CipherState,
        handshake_hash: [u8; KEY_LEN],
        remote_static: [u8; KEY_LEN],
    ) -> Self {
        Transport {
            send,
            recv,
            handshake_hash,
            remote_static,
        }
    }

    /// The handshake hash: unique to this session (channel binding, §11.2).
    pub fn handshake_hash(&self) -> [u8; KEY_LEN] {
        self.handshake_hash
    }

    /// The peer's static public key.
    pub fn remote_static(&self) -> [u8; KEY_LEN] {
        self.remote_static
    }

    /// Encrypts `plaintext` (at most 65535 - 16 bytes) into a transport message.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
        buf.extend_from_slice(plaintext);
        self.encrypt_in_place(&mut buf, 0)?;
        Ok(buf)
    }

    /// Encrypts the plaintext in `buf[from..]` (at most 65535 - 16 bytes)
    /// where it lies and appends the tag: the transport message without a
    /// copy, for framing that seals straight into its output buffer.
    pub fn encrypt_in_place(&mut self, buf: &mut Vec<u8>, from: usize) -> Result<(), NoiseError> {
        let len = buf.len().checked_sub(from).ok_or(NoiseError::BadLength)?;
        if len + TAG_LEN > MAX_MESSAGE {
            return Err(NoiseError::TooLong);
        }
        self.send.encrypt_with_ad(&[], buf, from)
    }

    /// Decrypts a transport message. Tampered, truncated, replayed or
    /// reordered messages fail, and the receive nonce does not move.
    pub fn decrypt(&mut self, message: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let mut buf = message.to_vec();
        let plaintext = self.decrypt_in_slice(&mut buf)?;
        buf.truncate(plaintext);
        Ok(buf)
    }

    /// Decrypts the transport message that is the whole of `message` where
    /// it lies (a receive buffer: no copy): the plaintext is left at its
    /// front and its length returned, the tag's 16 bytes behind it spare.
    /// A message that fails leaves the receive nonce as it was and
    /// `message` wiped.
    pub fn decrypt_in_slice(&mut self, message: &mut [u8]) -> Result<usize, NoiseError> {
        if message.len() > MAX_MESSAGE {
            return Err(NoiseError::TooLong);
        }
        self.recv.decrypt_in_slice(&[], message)
    }

    /// Rekeys the sending direction (§11.3); the peer rekeys its receiving one.
    pub fn rekey_send(&mut self) {
        self.send.rekey();
    }

    pub fn rekey_recv(&mut self) {
        self.recv.rekey();
    }

    pub fn send_nonce(&self) -> u64 {
        self.send.nonce()
    }

    pub fn recv_nonce(&self) -> u64 {
        self.recv.nonce()
    }

    #[cfg(test)]
    pub(crate) fn set_send_nonce(&mut self, n: u64) {
        self.send.nonce = n;
    }
}

/// Lower-case hex, for keys in logs and files.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses lower- or upper-case hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A whole handshake between two sets of keys held in one place, with
/// empty payloads: (initiator, responder) transports. For tests, fuzzing
/// and benchmarks of what is built on the transport; never on a network.
pub fn handshake_in_memory(
    prologue: &[u8],
    initiator: (Keypair, Keypair),
    responder: (Keypair, Keypair),
) -> Result<(Transport, Transport), NoiseError> {
    let (i, m1) = Initiator::new(prologue, initiator.0, initiator.1).write_message_1(&[])?;
    let (r, _) = Responder::new(prologue, responder.0, responder.1).read_message_1(&m1)?;
    let (r, m2) = r.write_message_2(&[])?;
    let (i, _) = i.read_message_2(&m2)?;
    let (i, m3) = i.write_message_3(&[])?;
    let (r, _) = r.read_message_3(&m3)?;
    Ok((i, r))
}

/// A completed handshake between fresh keys, for tests.
#[cfg(test)]
pub(crate) fn handshake_pair(prologue: &[u8]) -> (Transport, Transport) {
    let k = || Keypair::generate().expect("random key");
    handshake_in_memory(prologue, (k(), k()), (k(), k())).expect("handshake")
}
