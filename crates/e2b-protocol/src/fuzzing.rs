//! Entry points of the fuzz targets (`fuzz/`), also replayed over the committed corpus by the
//! tests. Not a stable API.

use crate::envd::{
    EntryResponse, EventMessage, ListDirResponse, SendSignalRequest, StartRequest,
    StreamInputRequest,
};
use crate::EnvelopeDecoder;

/// Feeds `data` to the envelope decoder in pieces cut where the data says, and decodes every
/// payload as each envd message; nothing may panic, and decoded envelopes never exceed the input.
pub fn envelope(data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let mut decoder = EnvelopeDecoder::default();
    let mut total = 0usize;
    for piece in rest.chunks(cut as usize + 1) {
        decoder.push(piece);
        loop {
            match decoder.next_envelope() {
                Ok(Some(env)) => {
                    total += 5 + env.payload.len();
                    assert!(total <= rest.len(), "decoded more than was given");
                    let p = &env.payload[..];
                    let _ = serde_json::from_slice::<EventMessage>(p);
                    let _ = serde_json::from_slice::<StartRequest>(p);
                    let _ = serde_json::from_slice::<StreamInputRequest>(p);
                    let _ = serde_json::from_slice::<SendSignalRequest>(p);
                    let _ = serde_json::from_slice::<EntryResponse>(p);
                    let _ = serde_json::from_slice::<ListDirResponse>(p);
                    let _ = serde_json::from_slice::<crate::EndStream>(p);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = crate::decode_metadata_filter(&String::from_utf8_lossy(rest));
}
