//! How a connection is encrypted, once it is: TLS after STARTTLS, or the
//! blackpony channel after XPONY. One description for the logs, the trace
//! header and a UCSPI backend's environment.

use crate::pony::keys::{PublicKey, fingerprint};
use crate::pony::negotiation::KEYWORD;
use crate::pony::noise::PROTOCOL_NAME;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encryption {
    /// What a finished TLS handshake negotiated.
    Tls {
        /// `TLSv1.3` or `TLSv1.2`.
        version: &'static str,
        /// The IANA cipher suite name, e.g. `TLS_AES_256_GCM_SHA384`.
        cipher: String,
    },
    /// The blackpony channel (proto-spec §4), with the peer's static key.
    Pony { peer: PublicKey },
}

impl Encryption {
    /// The negotiated TLS version and suite of a finished handshake.
    pub fn from_tls(state: &rustls::CommonState) -> Encryption {
        let version = match state.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        };
        let cipher = state
            .negotiated_cipher_suite()
            .map(|s| {
                let name = s.suite().as_str().unwrap_or("unknown");
                // rustls spells TLS 1.3 suites `TLS13_…`; IANA says `TLS_…`.
                match name.strip_prefix("TLS13_") {
                    Some(rest) => format!("TLS_{rest}"),
                    None => name.to_string(),
                }
            })
            .unwrap_or_else(|| "unknown".to_string());
        Encryption::Tls { version, cipher }
    }

    /// The blackpony channel of `transport`.
    pub fn pony(transport: &crate::pony::noise::Transport) -> Encryption {
        Encryption::Pony {
            peer: transport.remote_static(),
        }
    }

    pub fn is_pony(&self) -> bool {
        matches!(self, Encryption::Pony { .. })
    }

    /// `TLSv1.3`, or `XPONY`.
    pub fn protocol(&self) -> &'static str {
        match self {
            Encryption::Tls { version, .. } => version,
            Encryption::Pony { .. } => KEYWORD,
        }
    }

    /// The cipher suite, or the Noise protocol and the peer's key.
    pub fn details(&self) -> String {
        match self {
            Encryption::Tls { cipher, .. } => cipher.clone(),
            Encryption::Pony { peer } => format!("{PROTOCOL_NAME} peer={}", fingerprint(peer)),
        }
    }
}

/// `TLSv1.3/TLS_AES_256_GCM_SHA384`, `XPONY/Noise_XX_25519_ChaChaPoly_SHA256
/// peer=SHA256:…`: the `tls=` field of the log lines.
impl std::fmt::Display for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.protocol(), self.details())
    }
}
