//! The blackpony extension: opportunistic encryption between two blackpony
//! hosts inside SMTP, with a Noise XX handshake, key pinning and DNS keys.
//! The protocol is specified in `proto-spec/`.
//!
//! - [`noise`]: `Noise_XX_25519_ChaChaPoly_SHA256`, sans-IO;
//! - [`channel`]: the framed transport after the handshake (DATA, CLOSE, REKEY, padding).

pub mod channel;
pub mod noise;
