//! WebSocket (RFC 6455) as far as the stand-in runner needs it: the
//! handshake's accept key and the frames, std only (SHA-1 and base64 are
//! written out here so that the runner stays one static binary with no
//! dependencies).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The GUID the server appends to the client's key (RFC 6455, 1.3).
const HANDSHAKE_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Frames larger than this close the connection (1009, message too big).
pub const MAX_PAYLOAD: u64 = 16 << 20;

pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(client_key: &str) -> String {
    let mut input = client_key.trim().as_bytes().to_vec();
    input.extend_from_slice(HANDSHAKE_GUID.as_bytes());
    base64(&sha1(&input))
}

/// A frame or message over [`MAX_PAYLOAD`] (closed with 1009).
#[derive(Debug)]
pub struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "message larger than {MAX_PAYLOAD} bytes")
    }
}

impl std::error::Error for TooLarge {}

/// One frame as read from the wire, unmasked.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Encodes one final frame; `mask` is for the client side (a server's
/// frames are unmasked).
pub fn encode(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => frame.push(mask_bit | len as u8),
        len @ 126..=0xFFFF => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            frame.extend_from_slice(&key);
            frame.extend(
                payload
                    .iter()
                    .enumerate()
                    .map(|(i, byte)| byte ^ key[i % 4]),
            );
        }
        None => frame.extend_from_slice(payload),
    }
    frame
}

/// Reads one frame, unmasking its payload; refuses frames over
/// [`MAX_PAYLOAD`] with `InvalidData`.
pub fn read_frame(reader: &mut impl Read) -> io::Result<Frame> {
    let mut head = [0u8; 2];
    reader.read_exact(&mut head)?;
    let len = match head[1] & 0x7F {
        126 => {
            let mut len = [0u8; 2];
            reader.read_exact(&mut len)?;
            u64::from(u16::from_be_bytes(len))
        }
        127 => {
            let mut len = [0u8; 8];
            reader.read_exact(&mut len)?;
            u64::from_be_bytes(len)
        }
        len => u64::from(len),
    };
    if len > MAX_PAYLOAD {
        return Err(io::Error::new(io::ErrorKind::InvalidData, TooLarge));
    }
    let mask = if head[1] & 0x80 != 0 {
        let mut key = [0u8; 4];
        reader.read_exact(&mut key)?;
        Some(key)
    } else {
        None
    };
    let mut payload = vec![0u8; len as usize];
    reader.read_exact(&mut payload)?;
    if let Some(key) = mask {
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= key[i % 4];
        }
    }
    Ok(Frame {
        fin: head[0] & 0x80 != 0,
        opcode: head[0] & 0x0F,
        payload,
    })
}

/// A whole message (fragments joined) or a control frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    /// The close frame's payload (status code and reason), to send back.
    Close(Vec<u8>),
}

impl Message {
    /// The frame that carries this message, as a server sends it.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Text(text) => encode(TEXT, text.as_bytes(), None),
            Message::Binary(bytes) => encode(BINARY, bytes, None),
            Message::Ping(bytes) => encode(PING, bytes, None),
            Message::Close(bytes) => encode(CLOSE, bytes, None),
        }
    }
}

/// Reads the next message, joining fragments; pongs are skipped.
pub fn read_message(reader: &mut impl Read) -> io::Result<Message> {
    let mut message: Option<(u8, Vec<u8>)> = None;
    loop {
        let frame = read_frame(reader)?;
        match frame.opcode {
            PING => return Ok(Message::Ping(frame.payload)),
            CLOSE => return Ok(Message::Close(frame.payload)),
            PONG => continue,
            TEXT | BINARY if message.is_none() => message = Some((frame.opcode, frame.payload)),
            CONTINUATION if message.is_some() => {
                let (_, payload) = message.as_mut().expect("checked above");
                payload.extend_from_slice(&frame.payload);
                if payload.len() as u64 > MAX_PAYLOAD {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, TooLarge));
                }
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "unexpected frame",
                ));
            }
        }
        if frame.fin {
            let (opcode, payload) = message.take().expect("a data frame was read");
            return if opcode == TEXT {
                String::from_utf8(payload)
                    .map(Message::Text)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "text is not UTF-8"))
            } else {
                Ok(Message::Binary(payload))
            };
        }
    }
}

/// The `101 Switching Protocols` answer to an upgrade with that key.
pub fn handshake_response(client_key: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(client_key)
    )
}

/// What a server does on an upgraded connection besides answering.
pub struct Session {
    /// Sent first (engine.io's open packet).
    pub greeting: Option<Message>,
    /// Sent every interval from a thread of its own (engine.io's ping).
    pub heartbeat: Option<(Duration, Message)>,
}

/// Serves an upgraded connection until either side closes it: sends the
/// greeting, answers each message with `reply`'s answer, pings with pongs
/// and a close with a close; a frame that breaks the protocol or the size
/// limit closes it with 1002 or 1009.
pub fn serve(
    mut reader: impl Read,
    stream: TcpStream,
    session: Session,
    reply: impl Fn(Message) -> Option<Message>,
) -> io::Result<()> {
    let writer = Arc::new(Mutex::new(stream));
    let send = |frame: &[u8]| {
        writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(frame)
    };
    if let Some(greeting) = &session.greeting {
        send(&greeting.encode())?;
    }
    // Dropped when this function returns, which ends the heartbeat thread.
    let (_stop, stopped) = mpsc::channel::<()>();
    if let Some((interval, message)) = session.heartbeat {
        let writer = writer.clone();
        // Without a thread (PID limit reached) the connection goes unpinged.
        let _ = std::thread::Builder::new().spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                let mut stream = writer.lock().unwrap_or_else(|e| e.into_inner());
                if stream.write_all(&message.encode()).is_err() {
                    break;
                }
            }
        });
    }
    let result = loop {
        match read_message(&mut reader) {
            Ok(Message::Ping(payload)) => send(&encode(PONG, &payload, None))?,
            Ok(Message::Close(payload)) => break send(&Message::Close(payload).encode()),
            Ok(message) => {
                if let Some(answer) = reply(message) {
                    send(&answer.encode())?;
                }
            }
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => break Ok(()),
            Err(error) if error.kind() == io::ErrorKind::InvalidData => {
                let too_large = error.get_ref().is_some_and(|inner| inner.is::<TooLarge>());
                let code: u16 = if too_large { 1009 } else { 1002 };
                let _ = send(&Message::Close(code.to_be_bytes().to_vec()).encode());
                break Err(error);
            }
            Err(error) => break Err(error),
        }
    };
    let _ = writer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .shutdown(Shutdown::Both);
    result
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, byte)| n | u32::from(*byte) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(ALPHABET[(n >> (18 - 6 * i) & 0x3F) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

fn sha1(message: &[u8]) -> [u8; 20] {
    let mut state: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut padded = message.to_vec();
    padded.push(0x80);
    while padded.len() % 64 != 56 {
        padded.push(0);
    }
    padded.extend_from_slice(&(message.len() as u64 * 8).to_be_bytes());
    for block in padded.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = state;
        for (i, word) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let next = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*word);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = next;
        }
        for (word, add) in state.iter_mut().zip([a, b, c, d, e]) {
            *word = word.wrapping_add(add);
        }
    }
    let mut digest = [0u8; 20];
    for (bytes, word) in digest.chunks_mut(4).zip(state) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    digest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn sha1_and_base64_known_values() {
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        // Two blocks of padding.
        let long = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        assert_eq!(hex(&sha1(long)), "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
        for (input, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ] {
            assert_eq!(base64(input.as_bytes()), encoded);
        }
    }

    #[test]
    fn decodes_the_rfc_masked_hello() {
        let wire = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let frame = read_frame(&mut &wire[..]).unwrap();
        assert_eq!(
            frame,
            Frame {
                fin: true,
                opcode: TEXT,
                payload: b"Hello".to_vec()
            }
        );
        assert_eq!(encode(TEXT, b"Hello", Some([0x37, 0xfa, 0x21, 0x3d])), wire);
        assert_eq!(
            encode(TEXT, b"Hello", None),
            [0x81, 0x05, b'H', b'e', b'l', b'l', b'o']
        );
    }

    #[test]
    fn lengths_of_7_16_and_64_bits_round_trip() {
        for (len, header) in [
            (125, 2),
            (126, 4),
            (0xFFFF, 4),
            (0x1_0000, 10),
            (100_000, 10),
        ] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let unmasked = encode(BINARY, &payload, None);
            assert_eq!(unmasked.len(), header + len, "length {len}");
            let masked = encode(BINARY, &payload, Some([1, 2, 3, 4]));
            assert_eq!(masked.len(), header + 4 + len, "length {len}");
            for wire in [unmasked, masked] {
                let frame = read_frame(&mut &wire[..]).unwrap();
                assert_eq!((frame.fin, frame.opcode), (true, BINARY));
                assert_eq!(frame.payload, payload, "length {len}");
            }
        }
        assert_eq!(&encode(BINARY, &[0; 126], None)[1..4], [126, 0, 126]);
        assert_eq!(
            &encode(BINARY, &[0; 0x1_0000], None)[1..10],
            [127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }

    #[test]
    fn refuses_frames_over_the_limit_before_reading_them() {
        let mut wire = vec![0x82, 127];
        wire.extend_from_slice(&(MAX_PAYLOAD + 1).to_be_bytes());
        let error = read_frame(&mut &wire[..]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn joins_fragments_and_passes_control_frames() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&[0x01, 0x83, 0, 0, 0, 0]);
        wire.extend_from_slice(b"Hel");
        wire.extend(encode(PONG, b"", Some([9, 9, 9, 9])));
        wire.extend_from_slice(&[0x80, 0x82, 0, 0, 0, 0]);
        wire.extend_from_slice(b"lo");
        wire.extend(encode(PING, b"p", Some([5, 6, 7, 8])));
        wire.extend(encode(CLOSE, &1000u16.to_be_bytes(), Some([5, 6, 7, 8])));
        let mut reader = &wire[..];
        assert_eq!(
            read_message(&mut reader).unwrap(),
            Message::Text("Hello".into())
        );
        assert_eq!(
            read_message(&mut reader).unwrap(),
            Message::Ping(b"p".to_vec())
        );
        assert_eq!(
            read_message(&mut reader).unwrap(),
            Message::Close(vec![0x03, 0xE8])
        );
    }
}
