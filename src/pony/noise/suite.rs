//! The protocol's name and sizes (the 25519, ChaChaPoly and SHA256
//! functions of §12), and why a Noise operation fails.

/// The protocol name, hashed into the initial state (§5.2).
pub const PROTOCOL_NAME: &str = "Noise_XX_25519_ChaChaPoly_SHA256";

/// Noise messages are at most 65535 bytes (§3).
pub const MAX_MESSAGE: usize = 65535;

/// Length of an X25519 key, and of the hash output.
pub const KEY_LEN: usize = 32;

pub(super) const TAG_LEN: usize = 16;

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
