//! Payloads on gRPC streams: JSON cut into chunks of at most
//! [`CHUNK_BYTES`], sent ahead of the message that names them, and joined
//! again on the other side.

use std::collections::HashMap;

use isoflow_proto::CHUNK_BYTES;
use isoflow_proto::cluster::v1 as wire;
use serde_json::Value;

/// Cuts `value`'s JSON into chunks of payload `id`: at least one, so that
/// the id is known on the other side even for a short payload.
pub fn chunks(id: u64, value: &Value) -> impl Iterator<Item = wire::Chunk> {
    // Writing a JSON value to memory cannot fail.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    chunks_of(id, bytes)
}

pub fn chunks_of(id: u64, bytes: Vec<u8>) -> impl Iterator<Item = wire::Chunk> {
    let count = bytes.len().div_ceil(CHUNK_BYTES).max(1);
    (0..count).map(move |i| wire::Chunk {
        payload_id: id,
        data: bytes[i * CHUNK_BYTES..((i + 1) * CHUNK_BYTES).min(bytes.len())].to_vec(),
    })
}

/// Payloads being received on one stream.
#[derive(Debug, Default)]
pub struct Assembler {
    parts: HashMap<u64, Vec<u8>>,
    /// Bytes held, so a peer cannot make this side hold without bound.
    held: u64,
}

impl Assembler {
    /// Adds a chunk. Errs when the payloads held would exceed `limit`.
    pub fn add(&mut self, chunk: wire::Chunk, limit: u64) -> Result<(), String> {
        self.held += chunk.data.len() as u64;
        if self.held > limit {
            return Err(format!(
                "payloads in flight exceed the payload limit of {limit} bytes"
            ));
        }
        self.parts
            .entry(chunk.payload_id)
            .or_default()
            .extend_from_slice(&chunk.data);
        Ok(())
    }

    /// Takes payload `id` as JSON. `id` 0 is no payload.
    pub fn take(&mut self, id: u64) -> Result<Option<Value>, String> {
        if id == 0 {
            return Ok(None);
        }
        let bytes = self
            .parts
            .remove(&id)
            .ok_or_else(|| format!("payload {id} was named before it was sent"))?;
        self.held = self.held.saturating_sub(bytes.len() as u64);
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("payload {id} is not JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_cross_in_chunks_and_join_again() {
        let big = Value::String("x".repeat(CHUNK_BYTES * 2 + 10));
        let parts: Vec<_> = chunks(7, &big).collect();
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|c| c.data.len() <= CHUNK_BYTES));
        let mut assembler = Assembler::default();
        for part in parts {
            assembler.add(part, u64::MAX).expect("under the limit");
        }
        for part in chunks(8, &Value::Null) {
            assembler.add(part, u64::MAX).expect("under the limit");
        }
        assert_eq!(assembler.take(7).expect("joined"), Some(big));
        assert_eq!(assembler.take(8).expect("joined"), Some(Value::Null));
        assert_eq!(assembler.take(0).expect("none"), None);
        assert!(assembler.take(9).is_err(), "never sent");
    }

    #[test]
    fn a_peer_cannot_exceed_the_limit() {
        let mut assembler = Assembler::default();
        let error = chunks(1, &Value::String("y".repeat(100)))
            .try_for_each(|c| assembler.add(c, 50))
            .expect_err("over");
        assert!(error.contains("payload limit of 50 bytes"), "{error}");
    }
}
