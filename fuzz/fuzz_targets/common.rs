//! Helpers shared by the fuzz targets.
#![allow(dead_code)]

/// Sizes of reads, writes and socket pieces the targets choose from: the odd ones split
/// headers, the large ones cross frame boundaries.
const SIZES: [usize; 16] = [
    1,
    2,
    3,
    5,
    7,
    11,
    12,
    13,
    24,
    100,
    1000,
    4096,
    16384,
    65536,
    262_144,
    1 << 20,
];

/// Two sizes from one byte (a nibble each), to be cycled.
pub fn sizes(byte: u8) -> Vec<usize> {
    vec![SIZES[(byte & 0x0f) as usize], SIZES[(byte >> 4) as usize]]
}

pub const HEADER_LEN: usize = 12;
pub const TYPE_DATA: u8 = 0;
pub const TYPE_WINDOW_UPDATE: u8 = 1;
pub const TYPE_PING: u8 = 2;
pub const FLAG_SYN: u16 = 1;
pub const FLAG_ACK: u16 = 2;
pub const FLAG_FIN: u16 = 4;
pub const FLAG_RST: u16 = 8;

/// The fields of a yamux header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub kind: u8,
    pub flags: u16,
    pub stream_id: u32,
    pub length: u32,
}

impl Header {
    pub fn parse(h: &[u8]) -> Header {
        Header {
            version: h[0],
            kind: h[1],
            flags: u16::from_be_bytes([h[2], h[3]]),
            stream_id: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            length: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
        }
    }

    pub fn bytes(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = self.version;
        h[1] = self.kind;
        h[2..4].copy_from_slice(&self.flags.to_be_bytes());
        h[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        h[8..12].copy_from_slice(&self.length.to_be_bytes());
        h
    }

    /// Body bytes that follow the header (only DATA frames have a body).
    pub fn body_len(&self) -> usize {
        if self.kind == TYPE_DATA {
            self.length as usize
        } else {
            0
        }
    }
}

/// The offsets of the complete headers in a byte stream of yamux frames.
/// How many bytes at the end of `stream` are the start of a header that is cut short.
pub fn partial_header_at_end(stream: &[u8]) -> usize {
    let mut at = 0usize;
    while at < stream.len() {
        if stream.len() - at < HEADER_LEN {
            return stream.len() - at;
        }
        let h = Header::parse(&stream[at..]);
        at = at.saturating_add(HEADER_LEN).saturating_add(h.body_len());
    }
    0
}

pub fn header_offsets(stream: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    while stream.len() - at >= HEADER_LEN {
        out.push(at);
        let h = Header::parse(&stream[at..]);
        at = at.saturating_add(HEADER_LEN).saturating_add(h.body_len());
        if at > stream.len() {
            break;
        }
    }
    out
}
