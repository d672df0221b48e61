//! The states under the handshake: the CipherState (§5.1, ChaChaPoly from
//! ring) and the SymmetricState (§5.2: chaining key and handshake hash,
//! with SHA-256 and HKDF, §4.3), which the handshake mixes keys and
//! messages into and splits into the two transport ciphers.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::suite::{KEY_LEN, NoiseError, PROTOCOL_NAME, TAG_LEN};

/// A CipherState (§5.1): a key and a 64-bit nonce counter.
pub struct CipherState {
    key: Option<Zeroizing<[u8; KEY_LEN]>>,
    pub(super) nonce: u64,
}

impl CipherState {
    pub(super) fn empty() -> Self {
        CipherState {
            key: None,
            nonce: 0,
        }
    }

    pub(super) fn with_key(key: [u8; KEY_LEN]) -> Self {
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
    pub(super) fn encrypt_with_ad(
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
    pub(super) fn decrypt_with_ad(
        &mut self,
        ad: &[u8],
        buf: &mut Vec<u8>,
        from: usize,
    ) -> Result<(), NoiseError> {
        let message = buf.get_mut(from..).ok_or(NoiseError::BadLength)?;
        let plaintext = self.decrypt_in_slice(ad, message)?;
        buf.truncate(from + plaintext);
        Ok(())
    }

    /// DECRYPT(k, n, ad, ciphertext) where the message lies, in a slice:
    /// the plaintext is left at the front of `message` and its length
    /// returned (the tag's 16 bytes behind it are then spare). Failure is
    /// as for [`CipherState::decrypt_with_ad`]: the nonce stays, `message`
    /// is wiped. Without a key the message is its own plaintext (§5.1).
    pub(super) fn decrypt_in_slice(
        &mut self,
        ad: &[u8],
        message: &mut [u8],
    ) -> Result<usize, NoiseError> {
        let Some(key) = &self.key else {
            return Ok(message.len());
        };
        if self.nonce == u64::MAX {
            return Err(NoiseError::NonceExhausted);
        }
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
        self.nonce += 1;
        Ok(split)
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
pub(super) struct SymmetricState {
    cipher: CipherState,
    ck: Zeroizing<[u8; KEY_LEN]>,
    pub(super) h: [u8; KEY_LEN],
}

impl SymmetricState {
    pub(super) fn initialize(prologue: &[u8]) -> Self {
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

    pub(super) fn mix_hash(&mut self, data: &[u8]) {
        self.h = hash2(&self.h, data);
    }

    pub(super) fn mix_key(&mut self, ikm: &[u8]) {
        let (ck, k) = hkdf2(&self.ck, ikm);
        self.ck = ck;
        self.cipher = CipherState::with_key(*k);
    }

    /// Encrypts `buf[from..]` in place (if a key is set) and mixes the
    /// result into h.
    pub(super) fn encrypt_and_hash(
        &mut self,
        buf: &mut Vec<u8>,
        from: usize,
    ) -> Result<(), NoiseError> {
        let h = self.h;
        self.cipher.encrypt_with_ad(&h, buf, from)?;
        self.mix_hash(&buf[from..]);
        Ok(())
    }

    /// Decrypts `buf` in place. h must take in the ciphertext, so it is
    /// hashed before decryption replaces it (rather than copied).
    pub(super) fn decrypt_and_hash(&mut self, buf: &mut Vec<u8>) -> Result<(), NoiseError> {
        let next_h = hash2(&self.h, buf);
        let h = self.h;
        self.cipher.decrypt_with_ad(&h, buf, 0)?;
        self.h = next_h;
        Ok(())
    }

    /// Split (§5.2): the two transport keys, initiator-to-responder first.
    pub(super) fn split(self) -> (CipherState, CipherState, [u8; KEY_LEN]) {
        let (k1, k2) = hkdf2(&self.ck, &[]);
        (
            CipherState::with_key(*k1),
            CipherState::with_key(*k2),
            self.h,
        )
    }
}
