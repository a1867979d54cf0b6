//! A borrowing decoder for the common shape of an OTLP/protobuf metrics export.
//!
//! prost builds an owned tree (a `String` per name, key and value, a `Vec` per attribute
//! list and per data point list): ~400 allocations for a 70-datapoint export, about half of
//! the receive path's instructions. This decoder reads the same wire format into a few flat
//! vectors whose strings and histogram buckets borrow from the body.
//!
//! It handles only what the agent stores: resource and datapoint attributes with string,
//! boolean or integer values, gauges, sums and explicit-bucket histograms with packed
//! buckets. For anything else (other attribute value kinds, exemplars, scope attributes,
//! metric metadata, exponential histograms, summaries, repeated or unpacked fields, groups,
//! a malformed body) [`decode`] returns `None` and the caller decodes with prost, which
//! gives the full result or the error. Every string field read here is checked to be UTF-8,
//! as prost checks it, so a body accepted here is one prost accepts.

use std::ops::Range;

/// A decoded export: flat lists, indexed by the ranges in each entry.
#[derive(Debug, Default)]
pub(crate) struct Request<'a> {
    /// One per `ResourceMetrics`.
    pub(crate) resources: Vec<Resource>,
    /// Metrics of every resource, in order.
    pub(crate) metrics: Vec<Metric<'a>>,
    /// Gauge and sum datapoints of every metric, in order.
    pub(crate) numbers: Vec<NumberPoint>,
    /// Histogram datapoints of every metric, in order.
    pub(crate) histograms: Vec<HistogramPoint<'a>>,
    /// Attributes of every resource and datapoint.
    pub(crate) attrs: Vec<Attr<'a>>,
    /// The longest data window of the resource being decoded.
    window_ns: u64,
}

/// A `ResourceMetrics`: its resource attributes and metrics.
#[derive(Debug, Clone)]
pub(crate) struct Resource {
    pub(crate) attrs: Range<usize>,
    pub(crate) metrics: Range<usize>,
    /// The longest `time_unix_nano - start_time_unix_nano` among its points (0: none).
    pub(crate) window_ns: u64,
}

/// The data of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Data {
    /// No data field.
    None,
    /// A gauge (points in `numbers`).
    Gauge,
    /// A sum (points in `numbers`).
    Sum {
        /// `is_monotonic`.
        monotonic: bool,
        /// `aggregation_temporality` as sent.
        temporality: i32,
    },
    /// An explicit-bucket histogram (points in `histograms`).
    Histogram {
        /// `aggregation_temporality` as sent.
        temporality: i32,
    },
}

/// A metric: identity and its datapoints.
#[derive(Debug, Clone)]
pub(crate) struct Metric<'a> {
    pub(crate) name: &'a str,
    pub(crate) description: &'a str,
    pub(crate) unit: &'a str,
    pub(crate) data: Data,
    /// Into `numbers` or `histograms`, by `data`.
    pub(crate) points: Range<usize>,
}

/// A gauge or sum datapoint.
#[derive(Debug, Clone)]
pub(crate) struct NumberPoint {
    pub(crate) attrs: Range<usize>,
    /// `as_double`, or `as_int` converted; `None` when neither was sent.
    pub(crate) value: Option<f64>,
}

/// A histogram datapoint; the buckets are the packed little-endian bytes of the body.
#[derive(Debug, Clone)]
pub(crate) struct HistogramPoint<'a> {
    pub(crate) attrs: Range<usize>,
    pub(crate) count: u64,
    pub(crate) sum: Option<f64>,
    /// Packed `fixed64` bucket counts (a multiple of 8 bytes).
    pub(crate) bucket_counts: &'a [u8],
    /// Packed `double` bounds (a multiple of 8 bytes).
    pub(crate) explicit_bounds: &'a [u8],
}

/// An attribute value the agent keeps without rendering.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Scalar<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
}

/// One attribute.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attr<'a> {
    pub(crate) key: &'a str,
    pub(crate) value: Scalar<'a>,
}

/// The fast path does not apply (or the body is malformed): decode with prost.
struct Fallback;

type R<T> = Result<T, Fallback>;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// A cursor over one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    #[inline]
    fn varint(&mut self) -> R<u64> {
        // Most varints here (keys, lengths) are one byte.
        if let Some((&b, rest)) = self.buf.split_first()
            && b < 0x80
        {
            self.buf = rest;
            return Ok(u64::from(b));
        }
        self.varint_slow()
    }

    fn varint_slow(&mut self) -> R<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or(Fallback)?;
            self.buf = rest;
            // prost refuses a 10th byte above 1 (overflow).
            if i == 9 && b > 1 {
                return Err(Fallback);
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(Fallback)
    }

    fn fixed64(&mut self) -> R<u64> {
        let (b, rest) = self.buf.split_first_chunk::<8>().ok_or(Fallback)?;
        self.buf = rest;
        Ok(u64::from_le_bytes(*b))
    }

    fn bytes(&mut self) -> R<&'a [u8]> {
        let n = usize::try_from(self.varint()?).map_err(|_| Fallback)?;
        if n > self.buf.len() {
            return Err(Fallback);
        }
        let (b, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(b)
    }

    fn str(&mut self) -> R<&'a str> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Fallback)
    }

    /// The next (field number, wire type), or `None` at the end.
    #[inline]
    fn key(&mut self) -> R<Option<(u64, u8)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let k = self.varint()?;
        let (field, wire) = (k >> 3, (k & 7) as u8);
        if field == 0 || k > u64::from(u32::MAX) {
            return Err(Fallback);
        }
        Ok(Some((field, wire)))
    }

    /// Skips a field of wire type `wire` (varint, fixed64, length-delimited, fixed32).
    fn skip(&mut self, wire: u8) -> R<()> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.fixed64().map(drop),
            LEN => self.bytes().map(drop),
            FIXED32 => {
                let (_, rest) = self.buf.split_first_chunk::<4>().ok_or(Fallback)?;
                self.buf = rest;
                Ok(())
            }
            _ => Err(Fallback),
        }
    }

    /// Skips a known scalar field, checking its wire type as prost does.
    fn skip_as(&mut self, wire: u8, expected: u8) -> R<()> {
        if wire != expected {
            return Err(Fallback);
        }
        self.skip(wire)
    }

    /// A known string field that is not kept (still checked to be UTF-8).
    fn skip_str(&mut self, wire: u8) -> R<()> {
        self.string(wire).map(drop)
    }

    /// A length-delimited field (an embedded message or packed values).
    fn message(&mut self, wire: u8) -> R<&'a [u8]> {
        expect(wire, LEN)?;
        self.bytes()
    }

    /// A string field.
    fn string(&mut self, wire: u8) -> R<&'a str> {
        expect(wire, LEN)?;
        self.str()
    }

    /// A `fixed64`, `sfixed64` or `double` field, as its bits.
    fn bits64(&mut self, wire: u8) -> R<u64> {
        expect(wire, FIXED64)?;
        self.fixed64()
    }

    /// A varint field (`int64`, `bool`, enumeration).
    fn varint_field(&mut self, wire: u8) -> R<u64> {
        expect(wire, VARINT)?;
        self.varint()
    }
}

fn expect(wire: u8, expected: u8) -> R<()> {
    if wire == expected {
        Ok(())
    } else {
        Err(Fallback)
    }
}

/// Decodes `body` (an `ExportMetricsServiceRequest`), or `None` when the fast path does not
/// apply: see the module docs.
pub(crate) fn decode(body: &[u8]) -> Option<Request<'_>> {
    // Sized for a typical export (~60 body bytes per attribute, ~140 per datapoint), so
    // the lists rarely grow; a denser body grows them as usual.
    let mut out = Request {
        resources: Vec::with_capacity(1),
        metrics: Vec::with_capacity(body.len() / 256),
        numbers: Vec::with_capacity(body.len() / 160),
        histograms: Vec::with_capacity(body.len() / 1024),
        attrs: Vec::with_capacity(body.len() / 48),
        window_ns: 0,
    };
    decode_request(body, &mut out).ok()?;
    Some(out)
}

fn decode_request<'a>(body: &'a [u8], out: &mut Request<'a>) -> R<()> {
    let mut r = Reader { buf: body };
    while let Some((field, wire)) = r.key()? {
        match field {
            1 => {
                let b = r.message(wire)?;
                resource_metrics(b, out)?;
            }
            _ => r.skip(wire)?,
        }
    }
    Ok(())
}

fn resource_metrics<'a>(b: &'a [u8], out: &mut Request<'a>) -> R<()> {
    let mut r = Reader { buf: b };
    let mut attrs = out.attrs.len()..out.attrs.len();
    let metrics_start = out.metrics.len();
    out.window_ns = 0;
    let mut seen_resource = false;
    while let Some((field, wire)) = r.key()? {
        match field {
            1 => {
                // A second `resource` would be merged into the first: leave that to prost.
                expect(wire, LEN)?;
                if seen_resource {
                    return Err(Fallback);
                }
                seen_resource = true;
                let b = r.bytes()?;
                attrs = resource(b, out)?;
            }
            2 => {
                let b = r.message(wire)?;
                scope_metrics(b, out)?;
            }
            3 => r.skip_str(wire)?,
            _ => r.skip(wire)?,
        }
    }
    out.resources.push(Resource {
        attrs,
        metrics: metrics_start..out.metrics.len(),
        window_ns: out.window_ns,
    });
    Ok(())
}

fn resource<'a>(b: &'a [u8], out: &mut Request<'a>) -> R<Range<usize>> {
    let mut r = Reader { buf: b };
    let start = out.attrs.len();
    while let Some((field, wire)) = r.key()? {
        match field {
            1 => {
                let b = r.message(wire)?;
                key_value(b, out)?;
            }
            2 => r.skip_as(wire, VARINT)?,
            // Entity references: not modelled here.
            3 => return Err(Fallback),
            _ => r.skip(wire)?,
        }
    }
    Ok(start..out.attrs.len())
}

fn scope_metrics<'a>(b: &'a [u8], out: &mut Request<'a>) -> R<()> {
    let mut r = Reader { buf: b };
    while let Some((field, wire)) = r.key()? {
        match field {
            1 => {
                let b = r.message(wire)?;
                scope(b)?;
            }
            2 => {
                let b = r.message(wire)?;
                metric(b, out)?;
            }
            3 => r.skip_str(wire)?,
            _ => r.skip(wire)?,
        }
    }
    Ok(())
}

/// Checks an `InstrumentationScope` (nothing of it is kept).
fn scope(b: &[u8]) -> R<()> {
    let mut r = Reader { buf: b };
    while let Some((field, wire)) = r.key()? {
        match field {
            1 | 2 => r.skip_str(wire)?,
            // Scope attributes: not modelled here.
            3 => return Err(Fallback),
            4 => r.skip_as(wire, VARINT)?,
            _ => r.skip(wire)?,
        }
    }
    Ok(())
}

fn metric<'a>(b: &'a [u8], out: &mut Request<'a>) -> R<()> {
    let mut r = Reader { buf: b };
    let mut m = Metric {
        name: "",
        description: "",
        unit: "",
        data: Data::None,
        points: 0..0,
    };
    while let Some((field, wire)) = r.key()? {
        match field {
            1 => {
                m.name = r.string(wire)?;
            }
            2 => {
                m.description = r.string(wire)?;
            }
            3 => {
                m.unit = r.string(wire)?;
            }
            5 | 7 | 9 => {
                // A second data field would merge or replace: leave that to prost.
                expect(wire, LEN)?;
                if m.data != Data::None {
                    return Err(Fallback);
                }
                let b = r.bytes()?;
                (m.data, m.points) = data(field, b, out)?;
            }
            // Exponential histograms, summaries, metadata: not modelled here.
            10..=12 => return Err(Fallback),
            _ => r.skip(wire)?,
        }
    }
    out.metrics.push(m);
    Ok(())
}

/// Decodes a `Gauge` (5), `Sum` (7) or `Histogram` (9).
fn data<'a>(field: u64, b: &'a [u8], out: &mut Request<'a>) -> R<(Data, Range<usize>)> {
    let mut r = Reader { buf: b };
    let histogram = field == 9;
    let start = if histogram {
        out.histograms.len()
    } else {
        out.numbers.len()
    };
    let (mut monotonic, mut temporality) = (false, 0i32);
    while let Some((f, wire)) = r.key()? {
        match f {
            1 => {
                let b = r.message(wire)?;
                if histogram {
                    histogram_point(b, out)?;
                } else {
                    number_point(b, out)?;
                }
            }
            // prost reads an enumeration as an `i32` (truncating) and a bool as non-zero.
            2 if field != 5 => {
                temporality = r.varint_field(wire)? as i32;
            }
            3 if field == 7 => {
                monotonic = r.varint_field(wire)? != 0;
            }
            _ => r.skip(wire)?,
        }
    }
    let (data, end) = match field {
        5 => (Data::Gauge, out.numbers.len()),
        7 => (
            Data::Sum {
                monotonic,
                temporality,
            },
            out.numbers.len(),
        ),
        _ => (Data::Histogram { temporality }, out.histograms.len()),
    };
    Ok((data, start..end))
}

fn number_point<'a>(b: &'a [u8], out: &mut Request<'a>) -> R<()> {
    let mut r = Reader { buf: b };
    let start = out.attrs.len();
    let mut value = None;
    let (mut start_ns, mut time_ns) = (0, 0);
    while let Some((field, wire)) = r.key()? {
        match field {
            7 => {
                let b = r.message(wire)?;
                key_value(b, out)?;
            }
            2 => start_ns = r.bits64(wire)?,
            3 => time_ns = r.bits64(wire)?,
            4 => {
                value = Some(f64::from_bits(r.bits64(wire)?));
            }
            6 => {
                value = Some(r.bits64(wire)? as i64 as f64);
            }
            // Exemplars: not modelled here.
            5 => return Err(Fallback),
            8 => r.skip_as(wire, VARINT)?,
            _ => r.skip(wire)?,
        }
    }
    note_window(out, start_ns, time_ns);
    out.numbers.push(NumberPoint {
        attrs: start..out.attrs.len(),
        value,
    });
    Ok(())
}

fn histogram_point<'a>(b: &'a [u8], out: &mut Request<'a>) -> R<()> {
    let mut r = Reader { buf: b };
    let start = out.attrs.len();
    let mut p = HistogramPoint {
        attrs: 0..0,
        count: 0,
        sum: None,
        bucket_counts: &[],
        explicit_bounds: &[],
    };
    let (mut counts_seen, mut bounds_seen) = (false, false);
    let (mut start_ns, mut time_ns) = (0, 0);
    while let Some((field, wire)) = r.key()? {
        match field {
            9 => {
                let b = r.message(wire)?;
                key_value(b, out)?;
            }
            2 => start_ns = r.bits64(wire)?,
            3 => time_ns = r.bits64(wire)?,
            4 => {
                p.count = r.bits64(wire)?;
            }
            5 => {
                p.sum = Some(f64::from_bits(r.bits64(wire)?));
            }
            // Packed once; unpacked elements or a second run are concatenated by prost.
            6 | 7 => {
                expect(wire, LEN)?;
                let seen = if field == 6 {
                    &mut counts_seen
                } else {
                    &mut bounds_seen
                };
                if *seen {
                    return Err(Fallback);
                }
                *seen = true;
                let b = r.bytes()?;
                if b.len() % 8 != 0 {
                    return Err(Fallback);
                }
                if field == 6 {
                    p.bucket_counts = b;
                } else {
                    p.explicit_bounds = b;
                }
            }
            // Exemplars: not modelled here.
            8 => return Err(Fallback),
            10 => r.skip_as(wire, VARINT)?,
            11 | 12 => r.skip_as(wire, FIXED64)?,
            _ => r.skip(wire)?,
        }
    }
    p.attrs = start..out.attrs.len();
    note_window(out, start_ns, time_ns);
    out.histograms.push(p);
    Ok(())
}

/// Keeps the longest data window of the resource (a point without a start has none).
fn note_window(out: &mut Request<'_>, start_ns: u64, time_ns: u64) {
    if start_ns > 0 {
        out.window_ns = out.window_ns.max(time_ns.saturating_sub(start_ns));
    }
}

fn key_value<'a>(b: &'a [u8], out: &mut Request<'a>) -> R<()> {
    let mut r = Reader { buf: b };
    let mut key = "";
    let mut value = None;
    while let Some((field, wire)) = r.key()? {
        match field {
            1 => {
                key = r.string(wire)?;
            }
            2 => {
                // A second value message would be merged into the first: leave to prost.
                expect(wire, LEN)?;
                if value.is_some() {
                    return Err(Fallback);
                }
                let b = r.bytes()?;
                value = Some(any_value(b)?);
            }
            3 => r.skip_as(wire, VARINT)?,
            _ => r.skip(wire)?,
        }
    }
    // No value (rendered as ""): left to prost's path.
    let value = value.ok_or(Fallback)?;
    out.attrs.push(Attr { key, value });
    Ok(())
}

/// A string, boolean or integer `AnyValue` (the last one sent wins, as in prost).
fn any_value(b: &[u8]) -> R<Scalar<'_>> {
    let mut r = Reader { buf: b };
    let mut value = None;
    while let Some((field, wire)) = r.key()? {
        match field {
            1 => {
                value = Some(Scalar::Str(r.string(wire)?));
            }
            2 => {
                value = Some(Scalar::Bool(r.varint_field(wire)? != 0));
            }
            3 => {
                value = Some(Scalar::Int(r.varint_field(wire)? as i64));
            }
            // Doubles, arrays, lists, bytes, string-table references: rendered by the
            // prost path.
            4..=8 => return Err(Fallback),
            _ => r.skip(wire)?,
        }
    }
    value.ok_or(Fallback)
}
