//! The packed batch of `outpost:service@1.2.0` (`handle-packed`): every
//! message's topic and payload back to back in one byte list, their lengths
//! in a second list and their acceptance times in a third.
//!
//! Handing a `list<message>` to a component allocates in the component's
//! memory for each topic and each payload, and each of those allocations is
//! a call from the host into the component. A packed batch takes three,
//! whatever its size. The agent packs ([`PackedBatch::push`]); the SDK's
//! export unpacks ([`unpack`]) into the [`Message`]s a service handles.

use crate::Message;

/// A batch being packed; cleared and refilled for every call, so its three
/// buffers are allocated once per instance.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PackedBatch {
    pub bytes: Vec<u8>,
    /// A topic length, then a payload length, per message.
    pub lengths: Vec<u32>,
    pub received_ms: Vec<u64>,
}

impl PackedBatch {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.lengths.clear();
        self.received_ms.clear();
    }

    pub fn len(&self) -> usize {
        self.received_ms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.received_ms.is_empty()
    }

    /// Appends one message. A topic or payload of 4 GiB or more does not fit
    /// the length field: it is refused, and the batch is left as it was.
    pub fn push(&mut self, topic: &str, payload: &[u8], received_ms: u64) -> Result<(), String> {
        let too_long =
            |what: &str, len: usize| format!("{what} of {len} bytes does not fit a packed batch (4 GiB at most)");
        let topic_len = u32::try_from(topic.len()).map_err(|_| too_long("topic", topic.len()))?;
        let payload_len = u32::try_from(payload.len()).map_err(|_| too_long("payload", payload.len()))?;
        self.bytes.extend_from_slice(topic.as_bytes());
        self.bytes.extend_from_slice(payload);
        self.lengths.extend_from_slice(&[topic_len, payload_len]);
        self.received_ms.push(received_ms);
        Ok(())
    }
}

/// Splits a packed batch into its messages, in order. A batch whose lengths
/// do not add up to its bytes, or whose topic is not UTF-8, is refused with
/// the message's index: nothing of it is handed on.
pub fn unpack(bytes: &[u8], lengths: &[u32], received_ms: &[u64]) -> Result<Vec<Message>, String> {
    if lengths.len() != received_ms.len() * 2 {
        return Err(format!(
            "packed batch: {} lengths for {} messages (two per message expected)",
            lengths.len(),
            received_ms.len()
        ));
    }
    let mut batch = Vec::with_capacity(received_ms.len());
    let mut at = 0usize;
    for (i, (pair, &received_ms)) in lengths.chunks_exact(2).zip(received_ms).enumerate() {
        let (topic_len, payload_len) = (pair[0] as usize, pair[1] as usize);
        // Checked: on wasm32 two lengths near 4 GiB overflow a usize.
        let ends = at.checked_add(topic_len).and_then(|t| Some((t, t.checked_add(payload_len)?)));
        let parts =
            ends.and_then(|(topic_end, end)| Some((bytes.get(at..topic_end)?, bytes.get(topic_end..end)?, end)));
        let Some((topic, payload, end)) = parts else {
            return Err(format!(
                "packed batch: message {i} ends at byte {} but the batch has {} bytes",
                at as u64 + topic_len as u64 + payload_len as u64,
                bytes.len()
            ));
        };
        let topic = std::str::from_utf8(topic).map_err(|e| format!("packed batch: message {i}'s topic: {e}"))?;
        batch.push(Message { topic: topic.to_owned(), payload: payload.to_vec(), received_ms });
        at = end;
    }
    if at != bytes.len() {
        return Err(format!("packed batch: {} bytes left over after {} messages", bytes.len() - at, batch.len()));
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(messages: &[(&str, &[u8], u64)]) -> PackedBatch {
        let mut p = PackedBatch::default();
        for (topic, payload, at) in messages {
            p.push(topic, payload, *at).expect("fits");
        }
        p
    }

    #[test]
    fn round_trips_in_order_with_empty_parts() {
        let messages: [(&str, &[u8], u64); 4] =
            [("a/b", b"hello", 1), ("", b"no topic", 2), ("c/\u{e9}t\u{e9}", b"", 3), ("d", &[0, 255, 10], u64::MAX)];
        let p = packed(&messages);
        // "c/été" is 7 bytes: each é is two.
        assert_eq!((p.len(), p.bytes.len()), (4, 3 + 5 + 8 + 7 + 1 + 3));
        let back = unpack(&p.bytes, &p.lengths, &p.received_ms).expect("unpacks");
        let want: Vec<Message> = messages
            .iter()
            .map(|(t, b, at)| Message { topic: (*t).to_owned(), payload: b.to_vec(), received_ms: *at })
            .collect();
        assert_eq!(back, want);
        assert_eq!(unpack(&[], &[], &[]).expect("empty"), Vec::new());
    }

    #[test]
    fn a_cleared_batch_is_empty_and_reusable() {
        let mut p = packed(&[("x", b"1", 1)]);
        p.clear();
        assert!(p.is_empty() && p.bytes.is_empty() && p.lengths.is_empty());
        p.push("y", b"22", 2).expect("fits");
        assert_eq!(unpack(&p.bytes, &p.lengths, &p.received_ms).expect("unpacks")[0].payload, b"22");
    }

    #[test]
    fn malformed_batches_are_refused_naming_the_message() {
        let p = packed(&[("a/b", b"one", 1), ("c", b"two", 2)]);
        let err = unpack(&p.bytes, &p.lengths[..3], &p.received_ms).unwrap_err();
        assert!(err.contains("3 lengths for 2 messages"), "{err}");
        let err = unpack(&p.bytes[..8], &p.lengths, &p.received_ms).unwrap_err();
        assert!(err.contains("message 1 ends at byte 10 but the batch has 8 bytes"), "{err}");
        let mut longer = p.bytes.clone();
        longer.push(b'!');
        let err = unpack(&longer, &p.lengths, &p.received_ms).unwrap_err();
        assert!(err.contains("1 bytes left over after 2 messages"), "{err}");
        let bad = packed(&[("ok", b"", 1), ("\u{1}", b"", 2)]);
        let mut bytes = bad.bytes.clone();
        bytes[2] = 0xff;
        let err = unpack(&bytes, &bad.lengths, &bad.received_ms).unwrap_err();
        assert!(err.contains("message 1's topic"), "{err}");
        // Lengths whose sum overflows a 32-bit usize are refused, not wrapped.
        let err = unpack(b"ab", &[u32::MAX, u32::MAX], &[0]).unwrap_err();
        assert!(err.contains("message 0 ends at byte"), "{err}");
    }
}
