//! Decode-amplification budget for OTLP/HTTP bodies.
//!
//! The body cap bounds the bytes of a request, not the memory decoding it takes: an empty
//! nested protobuf message is 2 bytes on the wire and a struct of ~100 bytes once decoded
//! (measured: an 8 MiB body of empty `ResourceMetrics` grew the agent's RSS by ~140 MiB and
//! peaked higher). Before decoding, [`estimate_nodes`] counts an upper bound of the
//! allocations the body decodes into; a body over [`max_nodes`] is refused like a body over
//! the cap (413, `requests_refused_total{reason="too_large"}`). Legitimate OTLP carries
//! about one allocation per 10–15 wire bytes. The budget is one allocation per
//! [`BYTES_PER_NODE`] bytes of the cap: with the default 8 MiB cap that is 131,072
//! allocations, enough for ~1.5 MiB of dense real OTLP per request (one service's export is
//! KiBs), and it bounds what one request can decode into to roughly
//! `max_body_bytes / BYTES_PER_NODE * ~130` bytes (~17 MiB at the default cap) instead of
//! ~140 MiB with a budget of one per 8 bytes — the allocator keeps freed pages for a while, so
//! that peak would become resident memory.

/// One allocation is allowed per this many bytes of `receiver.max_body_bytes` (64).
pub const BYTES_PER_NODE: usize = 64;
/// Nesting levels scanned (OTLP metrics nest about 8 deep).
const MAX_DEPTH: u32 = 24;

/// The node budget for a body cap.
pub(crate) fn max_nodes(max_body_bytes: usize) -> u64 {
    (max_body_bytes / BYTES_PER_NODE).max(1024) as u64
}

/// Upper bound of the allocations decoding `body` makes: for protobuf every
/// length-delimited field (message, string, bytes, packed array), scanned recursively
/// wherever the payload itself parses as protobuf; for JSON every object, array and string.
/// Stops counting once `limit` is passed.
pub(crate) fn estimate_nodes(body: &[u8], json: bool, limit: u64) -> u64 {
    // Every counted node takes wire bytes of its own: a protobuf length-delimited field at
    // least a key byte and a length byte, a JSON object/array its bracket and a string its
    // two quotes. A body that short cannot exceed `limit`, so the scan (a tenth of the
    // receive path for a typical export) is skipped; the bound returned is still an upper
    // bound of the count.
    let ceiling = if json { body.len() } else { body.len() / 2 } as u64;
    if ceiling <= limit {
        return ceiling;
    }
    exact_nodes(body, json, limit)
}

/// The counting behind [`estimate_nodes`], without the short-body bound.
fn exact_nodes(body: &[u8], json: bool, limit: u64) -> u64 {
    if json {
        let mut n = 0u64;
        let mut quotes = 0u64;
        for &b in body {
            match b {
                b'{' | b'[' => n += 1,
                b'"' => quotes += 1,
                _ => {}
            }
        }
        return n + quotes / 2;
    }
    let mut count = 0u64;
    let _ = scan(body, 0, &mut count, limit);
    count
}

fn varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, b) in buf.iter().take(10).enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Scans `buf` as protobuf, adding length-delimited fields to `count`. Returns whether
/// `buf` is well-formed protobuf (then its nested payloads were counted too).
fn scan(buf: &[u8], depth: u32, count: &mut u64, limit: u64) -> bool {
    let mut i = 0usize;
    while i < buf.len() {
        if *count > limit {
            return true;
        }
        let Some((key, n)) = varint(&buf[i..]) else {
            return false;
        };
        i += n;
        if key >> 3 == 0 {
            return false;
        }
        match key & 7 {
            0 => match varint(buf.get(i..).unwrap_or(&[])) {
                Some((_, n)) => i += n,
                None => return false,
            },
            1 => i += 8,
            5 => i += 4,
            2 => {
                let Some((len, n)) = varint(buf.get(i..).unwrap_or(&[])) else {
                    return false;
                };
                i += n;
                let Some(end) = usize::try_from(len).ok().and_then(|l| i.checked_add(l)) else {
                    return false;
                };
                let Some(payload) = buf.get(i..end) else {
                    return false;
                };
                *count += 1;
                if depth < MAX_DEPTH && !payload.is_empty() {
                    let mut sub = 0u64;
                    if scan(payload, depth + 1, &mut sub, limit) {
                        *count += sub;
                    }
                }
                i = end;
            }
            _ => return false,
        }
    }
    i == buf.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_messages_count_one_each() {
        let body: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], 1000).flatten().collect();
        assert_eq!(exact_nodes(&body, false, u64::MAX), 1000);
        assert_eq!(exact_nodes(br#"[{},{"a":"b"}]"#, true, u64::MAX), 5);
        assert!(exact_nodes(&body, false, 10) <= 12);
        assert_eq!(exact_nodes(&[0xff, 0xff], false, 100), 0);
        // Over the limit: the scan decides (and stops early).
        assert!(estimate_nodes(&body, false, 10) > 10);
        assert!(estimate_nodes(&body, false, 10) <= 12);
    }

    #[test]
    fn short_bodies_bound_by_length() {
        // Densest protobuf: every two bytes an empty message; the exact count is the bound.
        let body: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], 500).flatten().collect();
        assert_eq!(estimate_nodes(&body, false, 500), 500);
        assert_eq!(exact_nodes(&body, false, 500), 500);
        // Any body: the length bound is never below the scanned count.
        for body in [&b"\x0a\x03\x0a\x01\x00"[..], b"\x12\x02ab", b"", b"\xff"] {
            assert!(estimate_nodes(body, false, 1000) >= exact_nodes(body, false, u64::MAX));
        }
        let json = br#"{"a":[{"b":"c"},{}]}"#;
        assert!(estimate_nodes(json, true, 1000) >= exact_nodes(json, true, u64::MAX));
    }
}
