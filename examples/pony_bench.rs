//! The blackpony extension against TLS 1.3, in memory, in one run:
//! handshakes per second and bulk throughput (`bench/pony.sh` runs this).
//!
//! Both sides run in this process with no sockets, so the figures are the
//! cryptography and framing alone. TLS is rustls 0.23 with the ring provider
//! (as blackpony's STARTTLS), TLS 1.3, X25519, ChaCha20-Poly1305 preferred so
//! the AEADs match; a P-256 certificate signed by a throwaway CA.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use blackpony::pony::channel::Channel;
use blackpony::pony::noise::{Keypair, Transport, handshake_in_memory};

fn noise_pair(client_static: &Keypair, server_static: &Keypair) -> (Transport, Transport) {
    let e = || Keypair::generate().expect("random");
    handshake_in_memory(
        b"bench",
        (client_static.clone(), e()),
        (server_static.clone(), e()),
    )
    .expect("handshake")
}

struct Tls {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

fn tls_configs() -> Tls {
    use rustls::crypto::ring as provider;
    let cert = rcgen::generate_simple_self_signed(vec!["bench.test".to_string()]).expect("cert");
    let der = cert.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(
        cert.signing_key.serialize_der(),
    ));
    let mut suites = provider::default_provider();
    suites.cipher_suites = vec![provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256];
    let suites = Arc::new(suites);
    let server = rustls::ServerConfig::builder_with_provider(suites.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).expect("root");
    let mut client = rustls::ClientConfig::builder_with_provider(suites)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Full handshakes every time, as for a new MX connection.
    client.resumption = rustls::client::Resumption::disabled();
    Tls {
        client: Arc::new(client),
        server: Arc::new(server),
    }
}

/// Moves TLS records from one connection to the other until neither has
/// anything to write.
fn pump(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
    let mut buf = Vec::new();
    for _ in 0..20 {
        let mut moved = false;
        buf.clear();
        while client.wants_write() {
            client.write_tls(&mut buf).expect("client write");
        }
        if !buf.is_empty() {
            moved = true;
            server.read_tls(&mut &buf[..]).expect("server read");
            server.process_new_packets().expect("server process");
        }
        buf.clear();
        while server.wants_write() {
            server.write_tls(&mut buf).expect("server write");
        }
        if !buf.is_empty() {
            moved = true;
            let mut slice = &buf[..];
            while !slice.is_empty() {
                client.read_tls(&mut slice).expect("client read");
                client.process_new_packets().expect("client process");
            }
        }
        if !moved {
            return;
        }
    }
}

fn tls_pair(tls: &Tls) -> (rustls::ClientConnection, rustls::ServerConnection) {
    let name = rustls_pki_types::ServerName::try_from("bench.test").expect("name");
    let mut c = rustls::ClientConnection::new(tls.client.clone(), name).expect("client");
    let mut s = rustls::ServerConnection::new(tls.server.clone()).expect("server");
    pump(&mut c, &mut s);
    assert!(!c.is_handshaking() && !s.is_handshaking());
    (c, s)
}

/// A buffer whose contents start `skip` bytes in, `skip` chosen so that
/// the copy that fills it lands 2 KiB past its source modulo 4 KiB. On
/// this machine's CPU (AMD EPYC, `rep movsb`) a 16 KiB copy whose
/// destination lies 1 to 15 bytes past its source modulo 4096 takes 15 to
/// 40 times as long ("4K aliasing"): an accident of where the allocator put
/// two buffers, which the bench must not measure. It did: the XPONY row's
/// plaintext buffer came 65,550 bytes after its wire buffer (bench/README).
struct Buf {
    bytes: Vec<u8>,
    skip: usize,
}

impl Buf {
    /// `source`: the address the filling copy reads from.
    fn filled_from(source: usize, capacity: usize) -> Buf {
        let mut bytes = Vec::with_capacity(capacity + 4096);
        let delta = (bytes.as_ptr() as usize).wrapping_sub(source) % 4096;
        let skip = (4096 + 2048 - delta) % 4096;
        bytes.resize(skip, 0);
        Buf { bytes, skip }
    }

    fn clear(&mut self) {
        self.bytes.truncate(self.skip);
    }

    fn at(&self) -> usize {
        self.bytes[self.skip..].as_ptr() as usize
    }
}

/// One bulk step, as `PonyStream` (src/transport/pony.rs) does it:
/// `chunk` sealed by `tx` into its send buffer; the frames carried to the
/// receiving side's buffer in two copies, standing for the socket's write
/// and read (as `write_tls` and `read_tls` do for the TLS row); opened
/// there in place by `rx`; the body copied out to the reader (as TLS's
/// `reader().read`).
fn bulk(mut tx: Channel, mut rx: Channel, chunk: &[u8]) -> impl FnMut() -> u64 + '_ {
    const CAPACITY: usize = 64 * 1024;
    // The seal copies `chunk` to behind each frame's 5-byte head.
    let mut sent = Buf::filled_from((chunk.as_ptr() as usize).wrapping_sub(5), CAPACITY);
    let mut link = Buf::filled_from(sent.at(), CAPACITY);
    let mut received = Buf::filled_from(link.at(), CAPACITY);
    let mut out = Buf::filled_from(received.at() + 5, CAPACITY);
    move || {
        sent.clear();
        tx.seal_data(chunk, &mut sent.bytes).expect("seal");
        link.clear();
        link.bytes.extend_from_slice(&sent.bytes[sent.skip..]);
        received.clear();
        received.bytes.extend_from_slice(&link.bytes[link.skip..]);
        out.clear();
        let mut at = received.skip;
        while at < received.bytes.len() {
            let frame = rx
                .open_in_place(&mut received.bytes[at..])
                .expect("open")
                .expect("a whole frame");
            out.bytes
                .extend_from_slice(&received.bytes[at + frame.body.start..at + frame.body.end]);
            at += frame.consumed;
        }
        assert_eq!(out.bytes.len() - out.skip, chunk.len());
        chunk.len() as u64
    }
}

/// Calls `step` until `budget` is used up; what the steps returned (a
/// count of handshakes or bytes), per second.
fn rate(budget: Duration, step: &mut dyn FnMut() -> u64) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        n += step();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Each row runs in this many slices, the rows taking turns, and the best
/// slice counts: another process on the machine (a build, a test run)
/// then slows a slice of every row, not the whole of one row.
const ROUNDS: u32 = 5;

fn main() {
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let slice = Duration::from_secs_f64(seconds) / ROUNDS;
    let client_static = Keypair::generate().expect("random");
    let server_static = Keypair::generate().expect("random");
    let tls = tls_configs();

    // Handshakes (both sides' work, one core): each side's static key is
    // cloned per handshake, as a server does per connection, and the
    // ephemeral keys are fresh, as TLS's key shares are.
    let mut noise_hs = || {
        let _ = noise_pair(&client_static, &server_static);
        1
    };
    let mut tls_hs = || {
        let _ = tls_pair(&tls);
        1
    };

    // Bulk: 16 KiB writes, sealed by one side and opened by the other.
    let chunk = vec![0x5au8; 16 * 1024];
    let (i, r) = noise_pair(&client_static, &server_static);
    let mut noise_bulk = bulk(Channel::new(i), Channel::new(r), &chunk);
    // The same without padding (proto-spec §5.4 pads every frame to a
    // multiple of 256 octets): what padding costs.
    let (i, r) = noise_pair(&client_static, &server_static);
    let mut noise_bulk_unpadded = bulk(Channel::new(i).with_padding(0), Channel::new(r), &chunk);

    let (mut c, mut s) = tls_pair(&tls);
    let mut tls_wire = Vec::with_capacity(64 * 1024);
    let mut out = vec![0u8; 64 * 1024];
    let mut tls_bulk = || {
        use std::io::{Read, Write};
        c.writer().write_all(&chunk).expect("write");
        tls_wire.clear();
        while c.wants_write() {
            c.write_tls(&mut tls_wire).expect("write tls");
        }
        let mut slice = &tls_wire[..];
        while !slice.is_empty() {
            s.read_tls(&mut slice).expect("read tls");
            s.process_new_packets().expect("process");
        }
        let mut got = 0;
        while got < chunk.len() {
            got += s.reader().read(&mut out).expect("read");
        }
        chunk.len() as u64
    };

    let mut rows: [&mut dyn FnMut() -> u64; 5] = [
        &mut noise_hs,
        &mut tls_hs,
        &mut noise_bulk,
        &mut noise_bulk_unpadded,
        &mut tls_bulk,
    ];
    let mut best = [0f64; 5];
    for _ in 0..ROUNDS {
        for (row, best) in rows.iter_mut().zip(&mut best) {
            *best = best.max(rate(slice, *row));
        }
    }
    let [noise_hs, tls_hs, noise_bulk, noise_bulk_unpadded, tls_bulk] = best;
    let (noise_bulk, noise_bulk_unpadded, tls_bulk) =
        (noise_bulk / 1e6, noise_bulk_unpadded / 1e6, tls_bulk / 1e6);

    println!(
        "blackpony extension vs TLS 1.3, in memory, {seconds:.1} s per row \
         (best of {ROUNDS} slices), one core"
    );
    println!("{:<58}{:>12}{:>9}", "", "per second", "ratio");
    println!(
        "{:<58}{:>12.0}{:>9.2}",
        "handshakes: XPONY (Noise_XX_25519_ChaChaPoly_SHA256)",
        noise_hs,
        noise_hs / tls_hs
    );
    println!(
        "{:<58}{:>12.0}{:>9.2}",
        "handshakes: TLS 1.3 (rustls/ring, X25519, P-256 cert)", tls_hs, 1.0
    );
    println!(
        "{:<58}{:>10.0} MB{:>9.2}",
        "bulk, 16 KiB writes: XPONY frames (ChaCha20-Poly1305)",
        noise_bulk,
        noise_bulk / tls_bulk
    );
    println!(
        "{:<58}{:>10.0} MB{:>9.2}",
        "bulk, 16 KiB writes: TLS 1.3 records (ChaCha20-Poly1305)", tls_bulk, 1.0
    );
    println!(
        "padding (L a multiple of 256, proto-spec §5.4): padded/unpadded XPONY bulk {:.3} \
         ({noise_bulk:.0} / {noise_bulk_unpadded:.0} MB/s)",
        noise_bulk / noise_bulk_unpadded
    );
}
