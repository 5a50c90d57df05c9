//! What a connection holds of its client's input between reads: the start of a frame that
//! straddles two reads, and a fragmented message in progress. It exists only while one of them
//! does, and never holds more than one message: at most `max_message` bytes of message and one
//! frame header, whatever the client sends and however it splits it.

use super::frame::{control_message, Assembler, FrameHead, Message, WsError};

/// Largest control frame payload; control frames may come between a message's fragments.
const MAX_CONTROL: usize = 125;

/// Input kept between reads.
#[derive(Debug, Default)]
pub struct Incoming {
    /// A frame header cut short by the end of a read (at most 14 bytes).
    header: Vec<u8>,
    /// The frame whose payload is arriving, once its header is whole.
    arriving: Option<Arriving>,
    /// The payload so far of a control frame that is arriving.
    control: Vec<u8>,
    /// The data message in flight; a data frame's payload goes straight into it.
    assembler: Assembler,
}

#[derive(Debug)]
struct Arriving {
    head: FrameHead,
    mask: [u8; 4],
    received: usize,
}

impl Incoming {
    /// Bytes of memory held (buffers' capacity).
    pub fn held(&self) -> usize {
        self.header.capacity() + self.control.capacity() + self.assembler.held()
    }

    /// Takes from `bytes` what the frame cut short needs, and handles it once whole. Returns
    /// the bytes taken, or `None` when all were taken and the frame is still incomplete.
    fn continue_frame(
        &mut self,
        bytes: &mut [u8],
        max_message: usize,
        on_message: &mut dyn FnMut(Message<'_>) -> bool,
    ) -> Result<Option<usize>, WsError> {
        let mut taken = 0;
        while self.arriving.is_none() {
            let limit = frame_limit(&self.assembler, max_message);
            let parsed = FrameHead::parse(&self.header, limit);
            let target = match parsed.map_err(|e| over(e, max_message))? {
                Ok(head) if self.header.len() >= head.header_len => {
                    self.start(head, max_message)?;
                    break;
                }
                Ok(head) => head.header_len,
                Err(needed) => needed,
            };
            let take = (target - self.header.len()).min(bytes.len() - taken);
            self.header.reserve_exact(target - self.header.len());
            self.header.extend_from_slice(&bytes[taken..taken + take]);
            taken += take;
            if self.header.len() < target {
                return Ok(None);
            }
        }
        taken += self.receive(&mut bytes[taken..]);
        let Some(arriving) = self.arriving.take_if(|a| a.received == a.head.payload_len) else {
            return Ok(None);
        };
        let message = if arriving.head.opcode.is_control() {
            let payload = std::mem::take(&mut self.control);
            control_message(arriving.head.opcode, &payload)?.map(&mut *on_message)
        } else {
            let message = self.assembler.end_frame(arriving.head.fin)?;
            message.map(&mut *on_message)
        };
        Ok(match message {
            Some(false) => Some(bytes.len()),
            _ => Some(taken),
        })
    }

    /// The header is whole: the frame's payload may start arriving.
    fn start(&mut self, head: FrameHead, max_message: usize) -> Result<(), WsError> {
        if head.opcode.is_control() {
            self.control = Vec::with_capacity(head.payload_len);
        } else {
            self.assembler.start_frame(&head, max_message)?;
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&self.header[head.header_len - 4..head.header_len]);
        self.header = Vec::new();
        self.arriving = Some(Arriving {
            head,
            mask,
            received: 0,
        });
        Ok(())
    }

    /// Unmasks and keeps as much of the arriving frame's payload as `bytes` holds; returns how
    /// much that was.
    fn receive(&mut self, bytes: &mut [u8]) -> usize {
        let Some(arriving) = &mut self.arriving else {
            return 0;
        };
        let take = (arriving.head.payload_len - arriving.received).min(bytes.len());
        let piece = &mut bytes[..take];
        for (i, byte) in piece.iter_mut().enumerate() {
            *byte ^= arriving.mask[(arriving.received + i) & 3];
        }
        arriving.received += take;
        if arriving.head.opcode.is_control() {
            self.control.extend_from_slice(piece);
        } else {
            self.assembler.extend(piece);
        }
        take
    }
}

/// The largest frame that may come next: what is left of the message in flight, but room for a
/// control frame.
fn frame_limit(assembler: &Assembler, max_message: usize) -> usize {
    (max_message - assembler.buffered()).max(MAX_CONTROL)
}

/// A frame over what is left of its message is a message over the largest one.
fn over(error: WsError, max_message: usize) -> WsError {
    match error {
        WsError::TooBig(_) => WsError::TooBig(max_message),
        other => other,
    }
}

/// Handles one read's bytes after what `pending` kept from earlier reads. Each whole message
/// goes to `on_message`, which says whether to go on (false once the connection closes). What
/// stays incomplete is kept in `pending`, which is `None` whenever nothing is: whole frames are
/// decoded where they lie, and only a frame cut by the end of a read is copied.
pub fn feed(
    pending: &mut Option<Box<Incoming>>,
    bytes: &mut [u8],
    max_message: usize,
    on_message: &mut dyn FnMut(Message<'_>) -> bool,
) -> Result<(), WsError> {
    let mut rest = bytes;
    if let Some(incoming) = pending.as_mut() {
        if incoming.arriving.is_some() || !incoming.header.is_empty() {
            match incoming.continue_frame(rest, max_message, on_message)? {
                Some(used) => rest = &mut rest[used..],
                None => return Ok(()),
            }
        }
    }
    let mut assembler = pending
        .as_mut()
        .map(|incoming| std::mem::take(&mut incoming.assembler))
        .unwrap_or_default();
    let (used, go_on) = decode_frames(rest, &mut assembler, max_message, on_message)?;
    let left = &mut rest[used..];
    if (left.is_empty() || !go_on) && assembler.is_idle() {
        *pending = None;
        return Ok(());
    }
    let incoming = pending.get_or_insert_with(Box::default);
    incoming.assembler = assembler;
    if go_on && !left.is_empty() {
        incoming.continue_frame(left, max_message, on_message)?;
    }
    Ok(())
}

/// Decodes and hands on the whole frames at the start of `buf`; returns the bytes used and
/// whether to go on.
fn decode_frames(
    buf: &mut [u8],
    assembler: &mut Assembler,
    max_message: usize,
    on_message: &mut dyn FnMut(Message<'_>) -> bool,
) -> Result<(usize, bool), WsError> {
    let mut used = 0;
    while used < buf.len() {
        let limit = frame_limit(assembler, max_message);
        let decoded = FrameHead::decode(&mut buf[used..], limit);
        let Some(head) = decoded.map_err(|e| over(e, max_message))? else {
            break;
        };
        let payload = &buf[used + head.header_len..used + head.frame_len()];
        used += head.frame_len();
        if let Some(message) = assembler.push(head, payload, max_message)? {
            if !on_message(message) {
                return Ok((used, false));
            }
        }
    }
    Ok((used, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1000;

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = vec![first];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    /// Feeds `stream` in pieces of `split` bytes; returns the messages and the most memory held
    /// between reads.
    fn feed_split(stream: &[u8], split: usize) -> Result<(Vec<String>, usize), WsError> {
        let (mut pending, mut texts, mut most) = (None, Vec::new(), 0);
        for piece in stream.chunks(split) {
            let mut piece = piece.to_vec();
            feed(&mut pending, &mut piece, MAX, &mut |message| {
                texts.push(match message {
                    Message::Text(text) => text.into_owned(),
                    other => format!("{other:?}"),
                });
                true
            })?;
            most = most.max(pending.as_ref().map_or(0, |p| p.held()));
        }
        assert!(pending.is_none(), "the stream ends on a message boundary");
        Ok((texts, most))
    }

    fn stream() -> Vec<u8> {
        let big = "b".repeat(MAX);
        let mut stream = masked(0x81, b"hello");
        stream.extend(masked(0x01, &[b'x'; 400]));
        stream.extend(masked(0x89, b"ping"));
        stream.extend(masked(0x00, &[b'y'; 300]));
        stream.extend(masked(0x80, &[b'z'; 300]));
        stream.extend(masked(0x81, big.as_bytes()));
        stream.extend(masked(0x81, b""));
        stream
    }

    #[test]
    fn any_split_gives_the_same_messages_and_holds_at_most_one_message() {
        let whole = feed_split(&stream(), usize::MAX).unwrap().0;
        assert_eq!(whole.len(), 5);
        assert_eq!(whole[2].len(), 1000, "400 + 300 + 300 bytes, across a ping");
        for split in [1, 2, 3, 5, 7, 13, 64, 127, 500, 1001] {
            let (texts, most) = feed_split(&stream(), split).unwrap();
            assert_eq!(texts, whole, "split every {split} bytes");
            assert!(
                most <= MAX + 14 + 125,
                "{most} bytes held, split every {split}"
            );
        }
    }

    #[test]
    fn a_message_over_the_limit_is_refused_however_it_is_cut() {
        let mut fragmented = masked(0x01, &[b'a'; 600]);
        fragmented.extend(masked(0x80, &[b'a'; 401]));
        for split in [1, 10, 600, usize::MAX] {
            let refused = feed_split(&fragmented, split).unwrap_err();
            assert_eq!(refused, WsError::TooBig(MAX), "split every {split}");
        }
        let single = masked(0x81, &[b'a'; 1001]);
        for split in [3, usize::MAX] {
            assert!(feed_split(&single, split).is_err());
        }
    }

    #[test]
    fn a_bad_length_is_refused_when_it_has_arrived_however_the_header_is_cut() {
        // Headers whose length is all there but whose mask is not yet.
        let top_bit = [0x81, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1];
        let too_big = [0x81, 0x80 | 126, 0xff, 0xff];
        for split in [1, 3, usize::MAX] {
            let refused = feed_split(&top_bit, split).unwrap_err();
            let expected = WsError::Protocol("payload length has its top bit set");
            assert_eq!(refused, expected, "split every {split}");
            let refused = feed_split(&too_big, split).unwrap_err();
            assert_eq!(refused, WsError::TooBig(MAX), "split every {split}");
        }
    }

    #[test]
    fn a_limit_below_a_control_frame_holds_for_a_whole_data_frame_too() {
        let frame = masked(0x81, &[b'a'; 100]);
        for split in [7, usize::MAX] {
            let mut pending = None;
            let refused = frame
                .chunks(split)
                .try_for_each(|piece| feed(&mut pending, &mut piece.to_vec(), 50, &mut |_| true));
            assert_eq!(refused, Err(WsError::TooBig(50)), "split every {split}");
        }
    }

    #[test]
    fn nothing_is_kept_after_a_whole_message_and_a_closing_connection_stops_reading() {
        let mut pending = None;
        let mut two = masked(0x81, b"one");
        two.extend(masked(0x81, b"two"));
        let mut seen = 0;
        feed(&mut pending, &mut two, MAX, &mut |_| {
            seen += 1;
            false
        })
        .unwrap();
        assert_eq!(seen, 1);
        let mut one = masked(0x81, b"x");
        feed(&mut pending, &mut one, MAX, &mut |_| true).unwrap();
        assert!(pending.is_none());
    }

    /// A random valid stream: text messages of one or more fragments, with pings between.
    fn random_stream(rng: &mut fastrand::Rng) -> Vec<u8> {
        let mut stream = Vec::new();
        for _ in 0..rng.usize(1..8) {
            let fragments = rng.usize(1..4);
            for f in 0..fragments {
                let payload: Vec<u8> = (0..rng.usize(0..300))
                    .map(|_| rng.u8(b'a'..=b'z'))
                    .collect();
                let fin = if f + 1 == fragments { 0x80 } else { 0 };
                let opcode = if f == 0 { 0x1 } else { 0x0 };
                stream.extend(masked(fin | opcode, &payload));
                if rng.bool() {
                    stream.extend(masked(0x89, b"p"));
                }
            }
        }
        stream
    }

    #[test]
    fn random_streams_cut_at_random_places_give_what_they_give_whole() {
        let mut rng = fastrand::Rng::with_seed(6455);
        for _ in 0..300 {
            let stream = random_stream(&mut rng);
            let whole = feed_split(&stream, usize::MAX).unwrap().0;
            let (mut pending, mut texts, mut start) = (None, Vec::new(), 0);
            while start < stream.len() {
                let end = (start + rng.usize(1..40)).min(stream.len());
                let mut piece = stream[start..end].to_vec();
                feed(&mut pending, &mut piece, MAX, &mut |message| {
                    texts.push(match message {
                        Message::Text(text) => text.into_owned(),
                        other => format!("{other:?}"),
                    });
                    true
                })
                .unwrap();
                assert!(pending.as_ref().map_or(0, |p| p.held()) <= MAX + 14 + 125);
                start = end;
            }
            assert_eq!(texts, whole);
            assert!(pending.is_none());
        }
    }
}
