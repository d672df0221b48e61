//! How the backend MTA learns who the real client is.
//!
//! A sidecar that connects to the MTA from localhost must not hand the client
//! localhost's trust: an MTA that relays for 127.0.0.1 would become an open
//! relay (docs/INTEROP-NOTES.md, "Front proxies"). Each mode carries the client's
//! address in a way one family of MTAs understands.

use std::net::{IpAddr, SocketAddr};

use crate::transport::Encryption;

/// How blackpony tells the backend who the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Identity {
    /// PROXY protocol v2 header at connection start (Postfix
    /// `smtpd_upstream_proxy_protocol = haproxy`, Exim `hosts_proxy`,
    /// OpenSMTPD `listen on … proxy-v2`).
    ProxyV2,
    /// PROXY protocol v1 (text) header at connection start.
    ProxyV1,
    /// Postfix XCLIENT after the greeting and before every EHLO/HELO
    /// (Postfix `smtpd_authorized_xclient_hosts`).
    Xclient,
    /// Spawn the backend per connection with UCSPI environment variables
    /// (qmail-smtpd and other tcpserver-style servers).
    Exec,
    /// Tell the backend nothing. Only for a backend that does not trust the
    /// sidecar's address: otherwise it makes an open relay.
    None,
}

impl Identity {
    pub fn as_str(self) -> &'static str {
        match self {
            Identity::ProxyV2 => "proxy-v2",
            Identity::ProxyV1 => "proxy-v1",
            Identity::Xclient => "xclient",
            Identity::Exec => "exec",
            Identity::None => "none",
        }
    }
}

/// The header a PROXY-mode backend reads before anything else, or nothing.
pub fn connection_preamble(identity: Identity, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    match identity {
        Identity::ProxyV2 => proxy_v2_header(client, local),
        Identity::ProxyV1 => proxy_v1_header(client, local),
        _ => Vec::new(),
    }
}

/// Both addresses in one family: an IPv4 client on a dual-stack socket shows
/// up as `::ffff:a.b.c.d`, and PROXY headers need both ends alike.
fn same_family(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    };
    let (c, l) = (canon(client), canon(local));
    match (c.ip(), l.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (c, l),
        (IpAddr::V4(v4), IpAddr::V6(_)) => {
            (SocketAddr::new(v4.to_ipv6_mapped().into(), c.port()), local)
        }
        (IpAddr::V6(_), IpAddr::V4(v4)) => {
            (c, SocketAddr::new(v4.to_ipv6_mapped().into(), l.port()))
        }
    }
}

/// PROXY protocol v1: `PROXY TCP4 client local cport lport\r\n`.
pub fn proxy_v1_header(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (c, l) = same_family(client, local);
    let family = if c.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        c.ip(),
        l.ip(),
        c.port(),
        l.port()
    )
    .into_bytes()
}

/// PROXY protocol v2, binary (haproxy's proxy-protocol.txt §2.2), command
/// PROXY over TCP, no TLVs.
pub fn proxy_v2_header(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
    let (c, l) = same_family(client, local);
    let mut out = Vec::with_capacity(52);
    out.extend_from_slice(SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    match (c.ip(), l.ip()) {
        (IpAddr::V4(ci), IpAddr::V4(li)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&ci.octets());
            out.extend_from_slice(&li.octets());
        }
        (ci, li) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(ci));
            out.extend_from_slice(&v6(li));
        }
    }
    out.extend_from_slice(&c.port().to_be_bytes());
    out.extend_from_slice(&l.port().to_be_bytes());
    out
}

/// The XCLIENT attributes a backend announced, e.g. `NAME ADDR PROTO HELO`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XclientAttrs(Vec<String>);

impl XclientAttrs {
    pub fn parse(params: &str) -> Self {
        XclientAttrs(
            params
                .split_whitespace()
                .map(str::to_ascii_uppercase)
                .collect(),
        )
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }
}

/// The XCLIENT command line (without CRLF) that tells a Postfix backend who
/// the client is. Only attributes the backend announced are sent. HELO and
/// PROTO are not among them: the client's own EHLO or HELO, which the
/// backend receives, sets those.
pub fn xclient_command(attrs: &XclientAttrs, client: SocketAddr, local: SocketAddr) -> String {
    let (c, l) = same_family(client, local);
    let addr = |ip: IpAddr| match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("IPV6:{a}"),
    };
    let mut line = String::from("XCLIENT");
    let mut add = |name: &str, value: String| {
        if attrs.has(name) {
            line.push(' ');
            line.push_str(name);
            line.push('=');
            line.push_str(&value);
        }
    };
    add("ADDR", addr(c.ip()));
    add("PORT", c.port().to_string());
    // blackpony does no reverse lookup of its own: the name is unknown, and
    // Postfix treats it like a client without a PTR record.
    add("NAME", "[UNAVAILABLE]".into());
    add("DESTADDR", addr(l.ip()));
    add("DESTPORT", l.port().to_string());
    line
}

/// The environment a UCSPI server (qmail-smtpd under tcpserver) expects,
/// plus the TLS facts once TLS is up (the names ucspi-ssl uses).
pub fn ucspi_env(
    client: SocketAddr,
    local: SocketAddr,
    hostname: &str,
    tls: Option<&Encryption>,
) -> Vec<(String, String)> {
    let (c, l) = same_family(client, local);
    let mut env = vec![
        ("PROTO".into(), "TCP".into()),
        ("TCPREMOTEIP".into(), c.ip().to_string()),
        ("TCPREMOTEPORT".into(), c.port().to_string()),
        ("TCPLOCALIP".into(), l.ip().to_string()),
        ("TCPLOCALPORT".into(), l.port().to_string()),
        ("TCPLOCALHOST".into(), hostname.into()),
    ];
    if let Some(tls) = tls {
        env.push(("SSL_PROTOCOL".into(), tls.protocol().into()));
        env.push(("SSL_CIPHER".into(), tls.details()));
        env.push(("BLACKPONY_TLS".into(), tls.to_string()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn proxy_v1() {
        assert_eq!(
            proxy_v1_header(sa("192.0.2.7:51234"), sa("127.0.0.1:25")),
            b"PROXY TCP4 192.0.2.7 127.0.0.1 51234 25\r\n"
        );
        assert_eq!(
            proxy_v1_header(sa("[::ffff:192.0.2.7]:5"), sa("[::ffff:127.0.0.1]:25")),
            b"PROXY TCP4 192.0.2.7 127.0.0.1 5 25\r\n"
        );
        assert_eq!(
            proxy_v1_header(sa("[2001:db8::1]:5"), sa("127.0.0.1:25")),
            b"PROXY TCP6 2001:db8::1 ::ffff:127.0.0.1 5 25\r\n"
        );
    }

    #[test]
    fn proxy_v2() {
        let h = proxy_v2_header(sa("192.0.2.7:51234"), sa("127.0.0.1:25"));
        let mut want = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        want.extend_from_slice(&[192, 0, 2, 7, 127, 0, 0, 1]);
        want.extend_from_slice(&51234u16.to_be_bytes());
        want.extend_from_slice(&25u16.to_be_bytes());
        assert_eq!(h, want);
        let h6 = proxy_v2_header(sa("[2001:db8::1]:1"), sa("[::1]:25"));
        assert_eq!(h6.len(), 16 + 36);
        assert_eq!(&h6[13..16], &[0x21, 0, 36]);
    }

    #[test]
    fn xclient() {
        let attrs =
            XclientAttrs::parse("NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT");
        let c = sa("127.0.0.77:4000");
        let l = sa("127.0.0.1:25");
        assert_eq!(
            xclient_command(&attrs, c, l),
            "XCLIENT ADDR=127.0.0.77 PORT=4000 NAME=[UNAVAILABLE] DESTADDR=127.0.0.1 DESTPORT=25"
        );
        assert_eq!(
            xclient_command(&XclientAttrs::parse("ADDR HELO PROTO"), c, l),
            "XCLIENT ADDR=127.0.0.77"
        );
        assert_eq!(
            xclient_command(&attrs, sa("[2001:db8::1]:1"), sa("[::1]:25")),
            "XCLIENT ADDR=IPV6:2001:db8::1 PORT=1 NAME=[UNAVAILABLE] DESTADDR=IPV6:::1 DESTPORT=25"
        );
    }
}
