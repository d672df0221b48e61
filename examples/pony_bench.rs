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
fn bulk<'a>(
    mut tx: Channel,
    mut rx: Channel,
    chunk: &'a [u8],
    placement: &'a Placement,
) -> impl FnMut() -> u64 + 'a {
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
            let body = &received.bytes[at + frame.body.start..at + frame.body.end];
            placement.note([
                (chunk.as_ptr() as usize, sent.at() + 5),
                (sent.at(), link.at()),
                (link.at(), received.at()),
                (body.as_ptr() as usize, out.at()),
            ]);
            out.bytes.extend_from_slice(body);
            at += frame.consumed;
        }
        assert_eq!(out.bytes.len() - out.skip, chunk.len());
        chunk.len() as u64
    }
}

/// Where each 16 KiB copy of a bulk step wrote, against where it read:
/// (destination - source) modulo 4096, every distinct tuple seen while the
/// row ran, so the output shows that no row paid the 4K-aliasing penalty
/// (1 to 15 on this CPU) and that both rows were placed alike.
#[derive(Default)]
struct Placement {
    seen: std::cell::RefCell<Vec<Vec<usize>>>,
    aliased: std::cell::Cell<bool>,
}

impl Placement {
    /// `copies`: (source, destination) of each copy of one step.
    fn note<const N: usize>(&self, copies: [(usize, usize); N]) {
        let distances = copies.map(|(from, to)| to.wrapping_sub(from) % 4096);
        if distances.iter().any(|d| (1..=15).contains(d)) {
            self.aliased.set(true);
        }
        let mut seen = self.seen.borrow_mut();
        if seen.len() < 8 && !seen.iter().any(|t| t[..] == distances[..]) {
            seen.push(distances.to_vec());
        }
    }

    fn aliased(&self) -> bool {
        self.aliased.get()
    }

    fn describe(&self) -> String {
        let seen = self.seen.borrow();
        let tuples: Vec<String> = seen
            .iter()
            .map(|t| {
                let t: Vec<String> = t.iter().map(|d| d.to_string()).collect();
                t.join(" ")
            })
            .collect();
        tuples.join(" | ")
    }
}

/// The sink `write_tls` writes into: the bench's wire buffer, noting where
/// rustls' record was (the source of the socket's first copy).
struct WireOut<'a> {
    wire: &'a mut Buf,
    from: usize,
}

impl std::io::Write for WireOut<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.write_vectored(&[std::io::IoSlice::new(bytes)])
    }

    fn write_vectored(&mut self, parts: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        let mut n = 0;
        for part in parts.iter().filter(|p| !p.is_empty()) {
            if self.from == 0 {
                self.from = part.as_ptr() as usize;
            }
            self.wire.bytes.extend_from_slice(part);
            n += part.len();
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The source `read_tls` reads from: the bench's wire buffer, noting where
/// rustls' receive buffer is (the destination of the socket's second copy).
struct WireIn<'a> {
    wire: &'a [u8],
    to: usize,
}

impl std::io::Read for WireIn<'_> {
    fn read(&mut self, into: &mut [u8]) -> std::io::Result<usize> {
        if self.to == 0 {
            self.to = into.as_ptr() as usize;
        }
        let n = self.wire.len().min(into.len());
        into[..n].copy_from_slice(&self.wire[..n]);
        self.wire = &self.wire[n..];
        Ok(n)
    }
}

/// The TLS bulk step, through rustls' buffered API as blackpony's STARTTLS
/// uses it (tokio-rustls): `writer()` encrypts a record into a buffer of
/// its own (the first copy), `write_tls` and `read_tls` stand for the
/// socket (two copies), `process_new_packets` decrypts in place and moves
/// the plaintext into a buffer of its own (a copy XPONY does not make), and
/// the reader copies it out (as `reader().read`, through `fill_buf` so the
/// bench sees where it reads). rustls allocates its buffers itself, so the
/// bench learns where they are from a first step and then places its own
/// buffers (`chunk`'s copy, the wire buffer, the reader's buffer) 2 KiB
/// from them modulo 4 KiB, as the XPONY row's; the one copy inside rustls
/// (receive buffer to plaintext buffer) is where malloc put it, and the
/// output prints it with the others.
fn tls_bulk<'a>(
    mut c: rustls::ClientConnection,
    mut s: rustls::ServerConnection,
    plaintext: &[u8],
    placement: &'a Placement,
) -> impl FnMut() -> u64 + 'a {
    use std::io::{BufRead, Write};
    const CAPACITY: usize = 64 * 1024;
    // One step; returns where rustls' record, receive buffer and plaintext
    // buffer were.
    let mut step = move |chunk: &[u8], wire: &mut Buf, out: &mut Buf| -> [usize; 3] {
        c.writer().write_all(chunk).expect("write");
        wire.clear();
        let mut sink = WireOut { wire, from: 0 };
        while c.wants_write() {
            c.write_tls(&mut sink).expect("write tls");
        }
        let record = sink.from;
        let mut source = WireIn {
            wire: &wire.bytes[wire.skip..],
            to: 0,
        };
        while !source.wire.is_empty() {
            s.read_tls(&mut source).expect("read tls");
            s.process_new_packets().expect("process");
        }
        let received = source.to;
        out.clear();
        let mut plain = 0;
        while out.bytes.len() - out.skip < chunk.len() {
            let mut reader = s.reader();
            let got = reader.fill_buf().expect("read");
            if plain == 0 {
                plain = got.as_ptr() as usize;
            }
            let n = got.len();
            out.bytes.extend_from_slice(got);
            reader.consume(n);
        }
        [record, received, plain]
    };
    // A first step in scratch buffers, to learn where rustls keeps its own
    // (the allocator hands the same blocks back step after step; the
    // placement printed at the end shows whether it did).
    let mut wire = Buf::filled_from(0, CAPACITY);
    let mut out = Buf::filled_from(0, CAPACITY);
    let [record, _, plain] = step(plaintext, &mut wire, &mut out);
    // rustls copies the plaintext to behind the record's 5-byte head.
    let mut chunk = Buf::filled_from(record + 5, plaintext.len());
    chunk.bytes.extend_from_slice(plaintext);
    let mut wire = Buf::filled_from(record, CAPACITY);
    let mut out = Buf::filled_from(plain, CAPACITY);
    let len = plaintext.len() as u64;
    move || {
        let at = chunk.at();
        let [record, received, plain] = step(&chunk.bytes[chunk.skip..], &mut wire, &mut out);
        placement.note([
            (at, record + 5),
            (record, wire.at()),
            (wire.at(), received),
            (received + 5, plain),
            (plain, out.at()),
        ]);
        len
    }
}

/// The CPU time this thread has run, in nanoseconds (the first field of
/// /proc/thread-self/schedstat), or None where the kernel does not say.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// Calls `step` until `budget` (wall time) is used up; what the steps
/// returned (a count of handshakes or bytes), per second of this thread's
/// CPU time: other processes on the 2-core machine take the CPU away from
/// the bench for a varying share of a slice, which the wall clock would
/// count against whichever row was running. Without schedstat, per second
/// of wall time.
fn rate(budget: Duration, step: &mut dyn FnMut() -> u64) -> f64 {
    let cpu = thread_cpu_ns();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        n += step();
    }
    let wall = start.elapsed().as_secs_f64();
    let seconds = match (cpu, thread_cpu_ns()) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
        _ => wall,
    };
    n as f64 / seconds
}

/// Each row runs in this many slices, the rows taking turns, and the best
/// slice counts: another process on the machine (a build, a test run)
/// then slows a slice of every row, not the whole of one row.
const ROUNDS: u32 = 10;

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
    let noise_placement = Placement::default();
    let mut noise_bulk = bulk(Channel::new(i), Channel::new(r), &chunk, &noise_placement);
    // The same without padding (proto-spec §5.4 pads every frame to a
    // multiple of 256 octets): what padding costs.
    let (i, r) = noise_pair(&client_static, &server_static);
    let unpadded_placement = Placement::default();
    let mut noise_bulk_unpadded = bulk(
        Channel::new(i).with_padding(0),
        Channel::new(r),
        &chunk,
        &unpadded_placement,
    );

    let (c, s) = tls_pair(&tls);
    let tls_placement = Placement::default();
    let mut tls_bulk = tls_bulk(c, s, &chunk, &tls_placement);
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

    let clock = if thread_cpu_ns().is_some() {
        "per second of the bench thread's CPU time"
    } else {
        "per second of wall time"
    };
    println!(
        "blackpony extension vs TLS 1.3, in memory, {seconds:.1} s per row \
         (best of {ROUNDS} slices), one core, {clock}"
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
    // Where every 16 KiB copy of a bulk step wrote against where it read,
    // modulo 4096: on this machine's CPU a copy 1 to 15 bytes ahead of its
    // source modulo 4096 takes 15 to 40 times as long (bench/README), so a
    // row whose buffers happened to land so would measure the allocator.
    println!(
        "placement of each 16 KiB copy per write, (destination - source) mod 4096 \
         (1-15 costs 15-40x on this CPU):"
    );
    println!(
        "  XPONY: seal, socket write, socket read, to the reader: {}",
        noise_placement.describe()
    );
    println!("  XPONY unpadded: {}", unpadded_placement.describe());
    println!(
        "  TLS: encrypt, socket write, socket read, to the plaintext buffer (inside rustls), \
         to the reader: {}",
        tls_placement.describe()
    );
    for (row, placement) in [
        ("XPONY", &noise_placement),
        ("XPONY unpadded", &unpadded_placement),
        ("TLS", &tls_placement),
    ] {
        if placement.aliased() {
            println!("  WARNING: a {row} copy lands 1-15 bytes ahead of its source modulo 4096");
        }
    }
}
