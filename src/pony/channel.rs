//! The framed transport of the blackpony extension, sans-IO.
//!
//! On the wire each frame is a big-endian u16 length `L` followed by `L`
//! bytes: one Noise transport message (ciphertext and 16-byte tag). Inside,
//! the plaintext is `type (1) || body length (u16be) || body || padding`:
//!
//! | type | meaning |
//! |---|---|
//! | 0x00 DATA | the body is SMTP bytes, in order |
//! | 0x01 CLOSE | the sender sends nothing more (a clean end) |
//! | 0x02 REKEY | the sender rekeys its sending key after this frame |
//!
//! Padding is zero bytes; every frame is padded so that its length `L` is a
//! multiple of 256 (proto-spec §5.4). A frame that does not decrypt or
//! breaks the record rules is fatal; the frames before it are still given
//! out first, so the outcome never depends on how the bytes were split into
//! reads (proto-spec §5.6).

use super::noise::{MAX_MESSAGE, NoiseError, Transport};

/// Bytes of the AEAD tag in each frame.
const TAG: usize = 16;
/// Type and body length inside each frame.
const HEADER: usize = 3;
/// The shortest frame: a tag and an empty record (proto-spec §5.1).
pub const MIN_FRAME: usize = TAG + HEADER;
/// proto-spec §5.4: frames are padded so that `L` is the smallest multiple
/// of this that holds the record (or 65535).
pub const PAD_BLOCK: usize = 256;
/// The most SMTP bytes one frame carries.
pub const MAX_BODY: usize = MAX_MESSAGE - TAG - HEADER;

const DATA: u8 = 0x00;
const CLOSE: u8 = 0x01;
const REKEY: u8 = 0x02;

/// Why the channel cannot go on. Every one of these ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("frame did not decrypt: {0}")]
    Noise(#[from] NoiseError),
    #[error("frame length {0} is below 19 (16-octet tag and 3-octet record header)")]
    ShortFrame(usize),
    #[error("frame body length {0} does not fit the frame")]
    BadBodyLength(usize),
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    #[error("frame type {0:#04x} with a body")]
    BodyNotEmpty(u8),
    #[error("non-zero padding")]
    BadPadding,
    #[error("data after CLOSE")]
    AfterClose,
    #[error("connection ended without a CLOSE frame (truncation)")]
    Truncated,
}

/// What [`Channel::open`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Opened {
    /// Bytes of the input used (whole frames only).
    pub consumed: usize,
    /// The peer sent CLOSE: nothing more will come.
    pub closed: bool,
}

/// One frame opened by [`Channel::open_in_place`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Bytes of the input the frame took (its length prefix included).
    pub consumed: usize,
    /// Where its DATA body lies in the input (empty for CLOSE and REKEY).
    pub body: std::ops::Range<usize>,
    /// It was CLOSE: nothing more will come.
    pub closed: bool,
}

/// The wire length (`2 + L`) of the frame at the start of `input`, once it
/// is all there (proto-spec §5.1: `L` is at least [`MIN_FRAME`]).
fn frame_len(input: &[u8]) -> Result<Option<usize>, ChannelError> {
    let [hi, lo, ..] = *input else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if input.len() < 2 + len {
        return Ok(None);
    }
    if len < MIN_FRAME {
        return Err(ChannelError::ShortFrame(len));
    }
    Ok(Some(2 + len))
}

/// An established blackpony channel: the Noise transport plus framing.
pub struct Channel {
    transport: Transport,
    /// Pad each frame so that its length `L` is a multiple of this many
    /// bytes (0: no padding).
    pad_to: usize,
    peer_closed: bool,
    /// A fatal error found behind frames that were opened in the same call:
    /// those are given out first, the error on the next call.
    broken: Option<ChannelError>,
}

impl Channel {
    /// A channel that pads as proto-spec §5.4 recommends ([`PAD_BLOCK`]),
    /// which hides the exact length of commands and replies from an
    /// observer of the frame sizes.
    pub fn new(transport: Transport) -> Self {
        Channel {
            transport,
            pad_to: PAD_BLOCK,
            peer_closed: false,
            broken: None,
        }
    }

    /// Pads every frame so that `L` is a multiple of `block` bytes (0 or 1:
    /// no padding, for the benchmark's baseline).
    pub fn with_padding(mut self, block: usize) -> Self {
        self.pad_to = block;
        self
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Seals `data` as DATA frames (as many as needed), appended to `out`.
    pub fn seal_data(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), ChannelError> {
        for chunk in data.chunks(MAX_BODY) {
            self.seal(DATA, chunk, out)?;
        }
        Ok(())
    }

    /// Seals a CLOSE frame: the clean end of the channel.
    pub fn seal_close(&mut self, out: &mut Vec<u8>) -> Result<(), ChannelError> {
        self.seal(CLOSE, &[], out)
    }

    /// Rekeys the sending direction after a REKEY record sealed by hand
    /// (test vectors; [`Channel::seal_rekey`] does both).
    #[cfg(test)]
    pub(crate) fn rekey_send_after_record(&mut self) {
        self.transport.rekey_send();
    }

    /// Seals a REKEY frame and rekeys the sending direction (Noise §11.3).
    pub fn seal_rekey(&mut self, out: &mut Vec<u8>) -> Result<(), ChannelError> {
        self.seal(REKEY, &[], out)?;
        self.transport.rekey_send();
        Ok(())
    }

    fn seal(&mut self, kind: u8, body: &[u8], out: &mut Vec<u8>) -> Result<(), ChannelError> {
        let padding = padding_for(body.len(), self.pad_to);
        self.seal_record(kind, body, padding, out)
    }

    /// Seals one record with exactly `padding` zero bytes (test vectors).
    pub(crate) fn seal_record(
        &mut self,
        kind: u8,
        body: &[u8],
        padding: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), ChannelError> {
        // The frame is built where it goes, at the end of `out`, and sealed
        // in place there: the body is copied once and nothing is allocated
        // per frame (bulk throughput is the AEAD and this one copy).
        let frame_len = HEADER + body.len() + padding + TAG;
        let (Ok(wire_len), Ok(body_len)) = (u16::try_from(frame_len), u16::try_from(body.len()))
        else {
            return Err(NoiseError::TooLong.into());
        };
        let start = out.len();
        out.reserve(2 + frame_len);
        out.extend_from_slice(&wire_len.to_be_bytes());
        out.push(kind);
        out.extend_from_slice(&body_len.to_be_bytes());
        out.extend_from_slice(body);
        out.resize(out.len() + padding, 0);
        if let Err(e) = self.transport.encrypt_in_place(out, start + 2) {
            out.truncate(start);
            return Err(e.into());
        }
        Ok(())
    }

    /// Opens every complete frame at the start of `input`, appending DATA
    /// bodies to `plaintext`. Stops after CLOSE. A fatal frame behind frames
    /// opened in this call stops it too: they are returned, and the error
    /// comes on the next call (proto-spec §5.6: the records before a bad
    /// one count whether or not they came in the same read).
    ///
    /// Each frame is copied once, to where its body is to end up, and
    /// opened there; a reader that owns its receive buffer saves that copy
    /// with [`Channel::open_in_place`].
    pub fn open(&mut self, input: &[u8], plaintext: &mut Vec<u8>) -> Result<Opened, ChannelError> {
        let mut opened = Opened::default();
        while !opened.closed {
            let rest = &input[opened.consumed..];
            // One whole frame is copied. Without one, what decides the
            // same outcome: the length prefix (wait for more, or bytes
            // after CLOSE), or all that is left (a frame too short).
            let take = match frame_len(rest) {
                Ok(Some(len)) => len,
                Ok(None) => rest.len().min(2),
                Err(_) => rest.len(),
            };
            let start = plaintext.len();
            plaintext.extend_from_slice(&rest[..take]);
            match self.open_in_place(&mut plaintext[start..]) {
                Ok(Some(frame)) => {
                    // Keep the body alone: cut what follows it, then what
                    // precedes it (a move of a few bytes, far cheaper than
                    // the AEAD).
                    plaintext.truncate(start + frame.body.end);
                    plaintext.drain(start..start + frame.body.start);
                    opened.consumed += frame.consumed;
                    opened.closed = frame.closed;
                }
                Ok(None) => {
                    plaintext.truncate(start);
                    break;
                }
                Err(e) => {
                    plaintext.truncate(start);
                    // The error is kept: the next call returns it.
                    return if opened.consumed > 0 {
                        Ok(opened)
                    } else {
                        Err(e)
                    };
                }
            }
        }
        Ok(opened)
    }

    /// Opens the frame at the start of `input` where it lies, in the
    /// caller's receive buffer: nothing is copied, and the DATA body is
    /// left at `input[frame.body]`. `None`: no whole frame yet. After
    /// CLOSE, any further byte is an error ([`ChannelError::AfterClose`]).
    /// An error is fatal: this and every later call return it, and
    /// `input[..]` may have been wiped.
    pub fn open_in_place(&mut self, input: &mut [u8]) -> Result<Option<Frame>, ChannelError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let frame = self.open_frame(input);
        if let Err(e) = &frame {
            self.broken = Some(e.clone());
        }
        frame
    }

    fn open_frame(&mut self, input: &mut [u8]) -> Result<Option<Frame>, ChannelError> {
        if self.peer_closed {
            return match input.is_empty() {
                true => Ok(None),
                false => Err(ChannelError::AfterClose),
            };
        }
        let Some(len) = frame_len(input)? else {
            return Ok(None);
        };
        let (kind, body_len) = self.open_record(&mut input[2..len])?;
        match kind {
            CLOSE => self.peer_closed = true,
            REKEY => self.transport.rekey_recv(),
            // DATA: the body is in `input` already.
            _ => {}
        }
        Ok(Some(Frame {
            consumed: len,
            body: 2 + HEADER..2 + HEADER + body_len,
            closed: kind == CLOSE,
        }))
    }

    /// Decrypts one frame (`L` bytes: ciphertext and tag) where it lies
    /// and checks its record; returns the record's type and body length
    /// (the body is at `frame[HEADER..]`).
    fn open_record(&mut self, frame: &mut [u8]) -> Result<(u8, usize), ChannelError> {
        let plaintext = self.transport.decrypt_in_slice(frame)?;
        let record = &frame[..plaintext];
        // The frame was at least MIN_FRAME bytes, so this always matches.
        let [kind, hi, lo, ..] = *record else {
            return Err(ChannelError::ShortFrame(record.len() + TAG));
        };
        let body_len = usize::from(u16::from_be_bytes([hi, lo]));
        let body_end = HEADER + body_len;
        if body_end > record.len() {
            return Err(ChannelError::BadBodyLength(body_len));
        }
        if record[body_end..].iter().any(|&b| b != 0) {
            return Err(ChannelError::BadPadding);
        }
        match kind {
            DATA => {}
            // proto-spec §5.3, §5.6: CLOSE and REKEY have empty bodies;
            // one with a body is fatal and is not acted on.
            CLOSE | REKEY if body_len != 0 => return Err(ChannelError::BodyNotEmpty(kind)),
            CLOSE | REKEY => {}
            other => return Err(ChannelError::UnknownType(other)),
        }
        Ok((kind, body_len))
    }

    /// Whether the peer has closed the channel cleanly.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }
}

/// The padding of a record with a body of `body_len` octets when frames are
/// padded to multiples of `block` (proto-spec §5.4: the smallest multiple
/// of `block` that holds the record and its tag, or 65535).
pub fn padding_for(body_len: usize, block: usize) -> usize {
    let unpadded = MIN_FRAME + body_len;
    if block <= 1 || unpadded >= MAX_MESSAGE {
        return 0;
    }
    (unpadded.div_ceil(block) * block).min(MAX_MESSAGE) - unpadded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Channel, Channel) {
        let (i, r) = crate::pony::noise::handshake_pair(b"");
        (Channel::new(i), Channel::new(r))
    }

    #[test]
    fn data_close_and_rekey_round_trip_in_any_split() {
        let (mut a, mut b) = pair();
        let mut wire = Vec::new();
        a.seal_data(b"EHLO client.example\r\n", &mut wire).unwrap();
        a.seal_rekey(&mut wire).unwrap();
        let big = vec![b'x'; MAX_BODY + 10];
        a.seal_data(&big, &mut wire).unwrap();
        a.seal_close(&mut wire).unwrap();

        // Feed the wire bytes in uneven pieces, as TCP may deliver them.
        let mut got = Vec::new();
        let mut pending = Vec::new();
        let mut closed = false;
        for piece in wire.chunks(1000) {
            pending.extend_from_slice(piece);
            let o = b.open(&pending, &mut got).unwrap();
            pending.drain(..o.consumed);
            closed |= o.closed;
        }
        assert!(closed && pending.is_empty());
        let mut want = b"EHLO client.example\r\n".to_vec();
        want.extend_from_slice(&big);
        assert_eq!(got, want);
        assert!(b.peer_closed());
    }

    /// Frames open where they lie in the receive buffer, one per call,
    /// with the same outcomes as `open`: the REKEY takes effect for the
    /// frame behind it, CLOSE ends the channel, a byte after it is fatal.
    #[test]
    fn frames_open_in_place_one_at_a_time() {
        let (mut a, mut b) = pair();
        let mut wire = Vec::new();
        a.seal_data(b"EHLO x\r\n", &mut wire).unwrap();
        a.seal_rekey(&mut wire).unwrap();
        a.seal_data(b"QUIT\r\n", &mut wire).unwrap();
        a.seal_close(&mut wire).unwrap();
        let sealed = wire.len();
        wire.push(0);
        // A frame not yet whole waits; nothing is opened or moved.
        assert_eq!(b.open_in_place(&mut wire.clone()[..257]), Ok(None));
        assert_eq!(b.open_in_place(&mut []), Ok(None));
        let mut at = 0;
        for (body, closed) in [
            (&b"EHLO x\r\n"[..], false),
            (b"", false),
            (b"QUIT\r\n", false),
            (b"", true),
        ] {
            let frame = b.open_in_place(&mut wire[at..]).unwrap().unwrap();
            assert_eq!(frame.consumed % PAD_BLOCK, 2, "{body:?}");
            assert_eq!(&wire[at..][frame.body], body);
            assert_eq!(frame.closed, closed);
            at += frame.consumed;
        }
        assert_eq!(at, sealed);
        assert!(b.peer_closed());
        assert_eq!(
            b.open_in_place(&mut wire[at..]),
            Err(ChannelError::AfterClose)
        );
        // Fatal for good.
        assert_eq!(b.open_in_place(&mut []), Err(ChannelError::AfterClose));
    }

    #[test]
    fn padding_hides_lengths() {
        let (a, mut b) = pair();
        let mut a = a.with_padding(64);
        let mut w1 = Vec::new();
        let mut w2 = Vec::new();
        a.seal_data(b"QUIT\r\n", &mut w1).unwrap();
        a.seal_data(b"MAIL FROM:<someone@example.org>\r\n", &mut w2)
            .unwrap();
        assert_eq!(w1.len(), w2.len());
        let mut got = Vec::new();
        b.open(&w1, &mut got).unwrap();
        b.open(&w2, &mut got).unwrap();
        assert_eq!(got, b"QUIT\r\nMAIL FROM:<someone@example.org>\r\n");
    }

    #[test]
    fn damaged_frames_are_fatal() {
        let (mut a, mut b) = pair();
        let mut wire = Vec::new();
        a.seal_data(b"hello", &mut wire).unwrap();
        let mut flipped = wire.clone();
        *flipped.last_mut().unwrap() ^= 0x80;
        assert!(matches!(
            b.open(&flipped, &mut Vec::new()),
            Err(ChannelError::Noise(_))
        ));
        // Fatal means for good: the intact frame is not opened after it.
        assert!(b.open(&wire, &mut Vec::new()).is_err());

        // A frame too short to hold a tag and a record header; the error
        // names its length (18 is the longest such frame, §5.1).
        let (_, mut b) = pair();
        let short = [&[0u8, 18][..], &[0; 18]].concat();
        assert_eq!(
            b.open(&short, &mut Vec::new()),
            Err(ChannelError::ShortFrame(18))
        );
        assert_eq!(
            ChannelError::ShortFrame(18).to_string(),
            "frame length 18 is below 19 (16-octet tag and 3-octet record header)"
        );
        // A failure did not move the nonce: a fresh receiver opens the frame
        // (and replaying it to that receiver fails).
        let (mut a, mut b) = pair();
        let mut wire = Vec::new();
        a.seal_data(b"hello", &mut wire).unwrap();
        let mut got = Vec::new();
        assert_eq!(b.open(&wire, &mut got).unwrap().consumed, wire.len());
        assert_eq!(got, b"hello");
        assert!(b.open(&wire, &mut Vec::new()).is_err());
    }

    /// proto-spec §5.6: the frames in front of a fatal one are given out,
    /// the error comes next, whether the bytes came in one read or many.
    #[test]
    fn frames_before_a_fatal_one_count_however_the_bytes_are_split() {
        for split in [usize::MAX, 0, 1] {
            let (mut a, mut b) = pair();
            let mut wire = Vec::new();
            a.seal_data(b"EHLO x\r\n", &mut wire).unwrap();
            let good = wire.len();
            a.seal_data(b"NOOP\r\n", &mut wire).unwrap();
            *wire.last_mut().unwrap() ^= 1;
            // All at once, the good frame alone then the bad one, a byte at a time.
            let split = match split {
                0 => good,
                n => n.min(wire.len()),
            };
            let mut got = Vec::new();
            let mut pending = Vec::new();
            let mut error = None;
            for piece in wire.chunks(split) {
                pending.extend_from_slice(piece);
                match b.open(&pending, &mut got) {
                    Ok(o) => {
                        pending.drain(..o.consumed);
                    }
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            if error.is_none() {
                error = b.open(&pending, &mut got).err();
            }
            assert_eq!(got, b"EHLO x\r\n", "split {split}");
            assert_eq!(
                error,
                Some(ChannelError::Noise(NoiseError::Decrypt)),
                "split {split}"
            );
        }
    }

    /// proto-spec §5.4: `L` is the smallest multiple of 256 that holds the
    /// record, or 65535.
    #[test]
    fn frames_are_padded_to_multiples_of_256() {
        let (mut a, mut b) = pair();
        let cases: &[(usize, usize)] = &[
            (0, 237),
            (6, 231),
            (237, 0),
            (238, 255),
            (16 * 1024, 237),
            (65_000, 5),
            (65_017, 244),
            (65_261, 0),
            (65_262, 254),
            (65_497, 19),
            (MAX_BODY, 0),
        ];
        for &(body, padding) in cases {
            assert_eq!(padding_for(body, PAD_BLOCK), padding, "body {body}");
            let mut wire = Vec::new();
            a.seal(DATA, &vec![b'x'; body], &mut wire).unwrap();
            let l = usize::from(u16::from_be_bytes([wire[0], wire[1]]));
            assert_eq!(l, MIN_FRAME + body + padding, "body {body}");
            assert!(l % PAD_BLOCK == 0 || l == MAX_MESSAGE, "body {body}: L {l}");
            let mut got = Vec::new();
            b.open(&wire, &mut got).unwrap();
            assert_eq!(got.len(), body);
        }
        let mut wire = Vec::new();
        a.seal_close(&mut wire).unwrap();
        assert_eq!(wire.len(), 2 + 256);
        assert_eq!(padding_for(6, 0), 0);
    }

    /// Frames are decrypted in place behind what `plaintext` already
    /// holds; a frame that fails leaves none of its bytes there.
    #[test]
    fn a_failed_frame_leaves_the_plaintext_as_it_was() {
        let (a, mut b) = pair();
        let mut a = a.with_padding(64);
        let mut wire = Vec::new();
        a.seal_data(b"first", &mut wire).unwrap();
        let good = wire.len();
        a.seal_data(b"second", &mut wire).unwrap();
        *wire.last_mut().unwrap() ^= 1;
        // An incomplete frame waits for more bytes.
        let mut got = Vec::new();
        let o = b.open(&wire[..good - 1], &mut got).unwrap();
        assert_eq!((o.consumed, got.len()), (0, 0));
        let mut got = b"before:".to_vec();
        // The good frame first (§5.6), then the error.
        assert_eq!(b.open(&wire, &mut got).unwrap().consumed, good);
        assert_eq!(got, b"before:first");
        assert!(matches!(
            b.open(&wire[good..], &mut got),
            Err(ChannelError::Noise(NoiseError::Decrypt))
        ));
        assert_eq!(got, b"before:first");
    }

    /// proto-spec §5.3: CLOSE and REKEY with a body are fatal, even with
    /// the body's octets zero (they are not padding).
    #[test]
    fn close_and_rekey_with_a_body_are_fatal() {
        for (kind, body) in [(CLOSE, &b"QUIT\r\n"[..]), (REKEY, &[0][..])] {
            let (mut a, mut b) = pair();
            let mut wire = Vec::new();
            a.seal_record(kind, body, 0, &mut wire).unwrap();
            let mut got = Vec::new();
            assert_eq!(
                b.open(&wire, &mut got),
                Err(ChannelError::BodyNotEmpty(kind))
            );
            assert!(got.is_empty() && !b.peer_closed());
        }
    }

    #[test]
    fn bytes_after_close_are_refused() {
        let (mut a, mut b) = pair();
        let mut wire = Vec::new();
        a.seal_close(&mut wire).unwrap();
        let o = b.open(&wire, &mut Vec::new()).unwrap();
        assert!(o.closed);
        let mut more = Vec::new();
        a.seal_data(b"late", &mut more).unwrap();
        assert_eq!(
            b.open(&more, &mut Vec::new()),
            Err(ChannelError::AfterClose)
        );
    }
}
