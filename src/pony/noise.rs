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

use std::sync::Arc;

use aws_lc_rs::agreement::{self, X25519};
use aws_lc_rs::encoding::{AsBigEndian, Curve25519SeedBin};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// The protocol name, hashed into the initial state (§5.2).
pub const PROTOCOL_NAME: &str = "Noise_XX_25519_ChaChaPoly_SHA256";

/// Noise messages are at most 65535 bytes (§3).
pub const MAX_MESSAGE: usize = 65535;

/// Length of an X25519 key, and of the hash output.
pub const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// Why a Noise operation failed. Every failure ends the session: Noise
/// gives no way to recover from a bad message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoiseError {
    #[error("message does not authenticate (tampered, truncated, replayed or reordered)")]
    Decrypt,
    #[error("handshake message has the wrong length")]
    BadLength,
    #[error("message longer than 65535 bytes")]
    TooLong,
    #[error("nonce space exhausted; the session must end")]
    NonceExhausted,
    #[error("the peer's key gives an all-zero Diffie-Hellman result (low-order point)")]
    WeakKey,
}

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

/// A CipherState (§5.1): a key and a 64-bit nonce counter.
pub struct CipherState {
    key: Option<Zeroizing<[u8; KEY_LEN]>>,
    nonce: u64,
}

impl CipherState {
    fn empty() -> Self {
        CipherState {
            key: None,
            nonce: 0,
        }
    }

    fn with_key(key: [u8; KEY_LEN]) -> Self {
        CipherState {
            key: Some(Zeroizing::new(key)),
            nonce: 0,
        }
    }

    /// The next nonce to be used (for tests and the spec's vectors).
    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    /// ENCRYPT(k, n, ad, plaintext) in place: `buf[from..]` holds the
    /// plaintext and the tag is appended to `buf`, so a caller can seal
    /// straight into its output buffer behind what is already there.
    /// Without a key, nothing happens (§5.1).
    fn encrypt_with_ad(
        &mut self,
        ad: &[u8],
        buf: &mut Vec<u8>,
        from: usize,
    ) -> Result<(), NoiseError> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        // §5.1: 2^64-1 is reserved (for rekey); a session that reaches it ends.
        if self.nonce == u64::MAX {
            return Err(NoiseError::NonceExhausted);
        }
        let plaintext = buf.get_mut(from..).ok_or(NoiseError::BadLength)?;
        let tag = aead_key(key)
            .seal_in_place_separate_tag(nonce(self.nonce), Aad::from(ad), plaintext)
            .map_err(|_| NoiseError::TooLong)?;
        buf.extend_from_slice(tag.as_ref());
        self.nonce += 1;
        Ok(())
    }

    /// DECRYPT(k, n, ad, ciphertext) in place: `buf[from..]` holds the
    /// ciphertext and tag; on success the tag is cut off and the plaintext
    /// is left in its place. On failure the nonce does not advance, so a
    /// forged message cannot desynchronise the session (§5.1); `buf` keeps
    /// its length, with `buf[from..]` wiped (ring zeroes what failed to
    /// authenticate, so no unauthenticated plaintext is ever seen).
    fn decrypt_with_ad(
        &mut self,
        ad: &[u8],
        buf: &mut Vec<u8>,
        from: usize,
    ) -> Result<(), NoiseError> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        if self.nonce == u64::MAX {
            return Err(NoiseError::NonceExhausted);
        }
        let message = buf.get_mut(from..).ok_or(NoiseError::BadLength)?;
        let Some(split) = message.len().checked_sub(TAG_LEN) else {
            return Err(NoiseError::Decrypt);
        };
        let (ciphertext, tag) = message.split_at_mut(split);
        let tag: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| NoiseError::Decrypt)?;
        aead_key(key)
            .open_in_place_separate_tag(
                nonce(self.nonce),
                Aad::from(ad),
                Tag::from(tag),
                ciphertext,
                0..,
            )
            .map_err(|_| NoiseError::Decrypt)?;
        buf.truncate(from + split);
        self.nonce += 1;
        Ok(())
    }

    /// REKEY (§4.2, §11.3): the new key is the first 32 bytes of
    /// ENCRYPT(k, 2^64-1, empty, 32 zero bytes). The nonce is unchanged.
    pub fn rekey(&mut self) {
        let Some(key) = &self.key else {
            return;
        };
        let mut block = Zeroizing::new([0u8; KEY_LEN]);
        // Encrypting 32 bytes cannot fail.
        let _ =
            aead_key(key).seal_in_place_separate_tag(nonce(u64::MAX), Aad::empty(), block.as_mut());
        self.key = Some(block);
    }
}

/// ring's ChaCha20-Poly1305 key for a 32-byte Noise key. The key schedule
/// is the key itself, so making it per message costs nothing measurable
/// (about 30 ns against 0.7 µs to seal 64 bytes), and the only lasting copy
/// of the key stays in a [`Zeroizing`] buffer.
///
/// Why ring (docs/ARCHITECTURE.md, "XPONY cryptography"): its one-pass
/// AVX2 ChaCha20-Poly1305 seals 16 KiB in about two thirds of the time
/// RustCrypto's two passes take, and it is the AEAD rustls already uses for
/// STARTTLS.
fn aead_key(key: &[u8; KEY_LEN]) -> LessSafeKey {
    // CHACHA20_POLY1305 takes exactly 32-byte keys, which this is.
    match UnboundKey::new(&CHACHA20_POLY1305, key) {
        Ok(key) => LessSafeKey::new(key),
        Err(_) => unreachable!("a 32-byte key is a ChaCha20-Poly1305 key"),
    }
}

/// ChaChaPoly's nonce (§12.3): 32 zero bits, then the counter little-endian.
fn nonce(n: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&n.to_le_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// HKDF with two outputs (§4.3), which is RFC 5869 HKDF with the chaining
/// key as salt and an empty info.
fn hkdf2(chaining_key: &[u8; KEY_LEN], ikm: &[u8]) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(chaining_key), ikm);
    let mut okm = Zeroizing::new([0u8; 64]);
    // 64 bytes is far below HKDF-SHA256's limit of 8160.
    let _ = hk.expand(&[], okm.as_mut());
    let mut a = Zeroizing::new([0u8; 32]);
    let mut b = Zeroizing::new([0u8; 32]);
    a.copy_from_slice(&okm[..32]);
    b.copy_from_slice(&okm[32..]);
    (a, b)
}

/// HASH(h || data), the step of MixHash (§5.2).
fn hash2(h: &[u8; KEY_LEN], data: &[u8]) -> [u8; KEY_LEN] {
    let mut hasher = Sha256::new();
    hasher.update(h);
    hasher.update(data);
    hasher.finalize().into()
}

/// The SymmetricState (§5.2): chaining key, handshake hash, cipher.
struct SymmetricState {
    cipher: CipherState,
    ck: Zeroizing<[u8; KEY_LEN]>,
    h: [u8; KEY_LEN],
}

impl SymmetricState {
    fn initialize(prologue: &[u8]) -> Self {
        // §5.2 InitializeSymmetric: the name is 32 bytes long, so it is
        // used as h directly (padded, were it shorter).
        let mut h = [0u8; KEY_LEN];
        let name = PROTOCOL_NAME.as_bytes();
        if name.len() <= KEY_LEN {
            h[..name.len()].copy_from_slice(name);
        } else {
            h = Sha256::digest(name).into();
        }
        let mut s = SymmetricState {
            cipher: CipherState::empty(),
            ck: Zeroizing::new(h),
            h,
        };
        s.mix_hash(prologue);
        s
    }

    fn mix_hash(&mut self, data: &[u8]) {
        self.h = hash2(&self.h, data);
    }

    fn mix_key(&mut self, ikm: &[u8]) {
        let (ck, k) = hkdf2(&self.ck, ikm);
        self.ck = ck;
        self.cipher = CipherState::with_key(*k);
    }

    /// Encrypts `buf[from..]` in place (if a key is set) and mixes the
    /// result into h.
    fn encrypt_and_hash(&mut self, buf: &mut Vec<u8>, from: usize) -> Result<(), NoiseError> {
        let h = self.h;
        self.cipher.encrypt_with_ad(&h, buf, from)?;
        self.mix_hash(&buf[from..]);
        Ok(())
    }

    /// Decrypts `buf` in place. h must take in the ciphertext, so it is
    /// hashed before decryption replaces it (rather than copied).
    fn decrypt_and_hash(&mut self, buf: &mut Vec<u8>) -> Result<(), NoiseError> {
        let next_h = hash2(&self.h, buf);
        let h = self.h;
        self.cipher.decrypt_with_ad(&h, buf, 0)?;
        self.h = next_h;
        Ok(())
    }

    /// Split (§5.2): the two transport keys, initiator-to-responder first.
    fn split(self) -> (CipherState, CipherState, [u8; KEY_LEN]) {
        let (k1, k2) = hkdf2(&self.ck, &[]);
        (
            CipherState::with_key(*k1),
            CipherState::with_key(*k2),
            self.h,
        )
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
        self.decrypt_in_place(&mut buf, 0)?;
        Ok(buf)
    }

    /// Decrypts the transport message in `buf[from..]` where it lies: on
    /// success the plaintext is left there and the tag cut off. A message
    /// that fails leaves the receive nonce and the length of `buf` as they
    /// were, `buf[from..]` wiped.
    pub fn decrypt_in_place(&mut self, buf: &mut Vec<u8>, from: usize) -> Result<(), NoiseError> {
        let len = buf.len().checked_sub(from).ok_or(NoiseError::BadLength)?;
        if len > MAX_MESSAGE {
            return Err(NoiseError::TooLong);
        }
        self.recv.decrypt_with_ad(&[], buf, from)
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

#[cfg(test)]
mod tests;
