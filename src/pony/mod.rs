//! The blackpony extension: opportunistic encryption between two blackpony
//! hosts inside SMTP, with a Noise XX handshake, key pinning and DNS keys.
//! The protocol is specified in `proto-spec/`.
//!
//! - [`noise`]: `Noise_XX_25519_ChaChaPoly_SHA256`, sans-IO;
//! - [`channel`]: the framed transport after the handshake (DATA, CLOSE, REKEY, padding);
//! - [`keys`]: host key files, fingerprints, DNS key records;
//! - [`negotiation`]: the EHLO keyword, the prologue, the handshake payloads;
//! - [`pins`]: keys remembered per MX host, and what a key (or a missing extension) means;
//! - `vectors` (tests only): the specification's test vectors, produced and checked here.

pub mod channel;
pub mod keys;
pub mod negotiation;
pub mod noise;
pub mod pins;
#[cfg(test)]
mod vectors;
