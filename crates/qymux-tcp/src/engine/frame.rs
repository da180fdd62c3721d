//! hashicorp yamux frame headers (spec version 0).
//!
//! Every frame starts with a 12-byte header: version (0), type, flags (u16), stream id
//! (u32) and length (u32), all big-endian. The length is a DATA frame's body size, a
//! WINDOW_UPDATE's credit, a PING's opaque value or a GO_AWAY's error code.

/// Length of a frame header.
pub const HEADER_LEN: usize = 12;

/// The only protocol version there is.
pub const VERSION: u8 = 0;

/// DATA: `length` bytes of stream data follow the header.
pub const TYPE_DATA: u8 = 0;
/// WINDOW_UPDATE: `length` more bytes of credit for the stream; also carries flags.
pub const TYPE_WINDOW_UPDATE: u8 = 1;
/// PING: SYN asks, ACK answers with the same opaque value.
pub const TYPE_PING: u8 = 2;
/// GO_AWAY: the sender opens and accepts no more streams; `length` is an error code.
pub const TYPE_GO_AWAY: u8 = 3;

/// Opens a stream (or asks for a ping answer).
pub const FLAG_SYN: u16 = 1;
/// Acknowledges a stream (or answers a ping).
pub const FLAG_ACK: u16 = 2;
/// Finishes the sender's side of a stream.
pub const FLAG_FIN: u16 = 4;
/// Resets a stream in both directions.
pub const FLAG_RST: u16 = 8;

/// GO_AWAY: normal termination; hashicorp's drain (no new streams).
pub const GO_AWAY_NORMAL: u32 = 0;
/// GO_AWAY: the peer broke the protocol.
pub const GO_AWAY_PROTOCOL_ERROR: u32 = 1;
/// GO_AWAY: the sender failed internally.
pub const GO_AWAY_INTERNAL_ERROR: u32 = 2;
/// GO_AWAY, Qymux's own code: the sender dialed this session in a race against another
/// transport, the other won, and this one is closed at once ("superseded"), so the
/// server can tell it from an agent that leaves. hashicorp's yamux ends the session on a
/// code it does not know (logging "received unexpected go away"), which is what the
/// sender does next anyway.
pub const GO_AWAY_SUPERSEDED: u32 = 0x7179_0001;

/// The close reason a session closed with [`GO_AWAY_SUPERSEDED`] reports
/// (`CloseReason::Peer(Some(SUPERSEDED))`), the same as a QUIC connection closed with
/// that reason.
pub const SUPERSEDED: &str = "superseded";

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// One of the `TYPE_*` constants.
    pub kind: u8,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// The stream (0 for PING and GO_AWAY).
    pub stream_id: u32,
    /// Body length, credit, opaque value or error code, by `kind`.
    pub length: u32,
}

impl Header {
    /// A header with the given fields.
    pub const fn new(kind: u8, flags: u16, stream_id: u32, length: u32) -> Self {
        Self {
            kind,
            flags,
            stream_id,
            length,
        }
    }

    /// The header's wire form.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = VERSION;
        b[1] = self.kind;
        b[2..4].copy_from_slice(&self.flags.to_be_bytes());
        b[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        b[8..12].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Parses a header; a version other than 0 or an unknown type is a protocol
    /// violation, described by the error.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, String> {
        if b[0] != VERSION {
            return Err(format!("unsupported yamux version {}", b[0]));
        }
        if b[1] > TYPE_GO_AWAY {
            return Err(format!("unknown yamux frame type {}", b[1]));
        }
        Ok(Header {
            kind: b[1],
            flags: u16::from_be_bytes([b[2], b[3]]),
            stream_id: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            length: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        })
    }

    /// Whether `flag` is set.
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_matches_the_spec_layout() {
        let h = Header::new(
            TYPE_WINDOW_UPDATE,
            FLAG_SYN | FLAG_FIN,
            0x0102_0304,
            0x0A0B_0C0D,
        );
        let b = h.encode();
        assert_eq!(b, [0, 1, 0, 5, 1, 2, 3, 4, 0x0A, 0x0B, 0x0C, 0x0D]);
        assert_eq!(Header::decode(&b).unwrap(), h);
    }

    #[test]
    fn refuses_other_versions_and_types() {
        let mut b = Header::new(TYPE_DATA, 0, 1, 0).encode();
        b[0] = 1;
        assert!(Header::decode(&b).unwrap_err().contains("version"));
        let mut b = Header::new(TYPE_DATA, 0, 1, 0).encode();
        b[1] = 4;
        assert!(Header::decode(&b).unwrap_err().contains("type"));
    }
}
