//! Series identities: the borrowed view of a request's attributes and the owned key, ordered
//! alike so a lookup needs no allocation.

use std::borrow::Borrow;
use std::cmp::Ordering;

use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};

use super::*;
use crate::wire;

/// The identity of a series as seen through the decoded request (no allocation) or as
/// stored. Ordered exactly like [`SeriesKey`] (name, then the sorted attribute pairs), so a
/// borrowed view can look up a `BTreeMap<SeriesKey, _>` without building an owned key.
pub(crate) trait KeyView {
    fn name(&self) -> &str;
    fn attr_len(&self) -> usize;
    /// Attribute `i` (in key order): key and the UTF-8 bytes of the value as rendered by
    /// [`render_value`]; a value not held as a string (an integer, a boolean) is rendered
    /// into `buf`. (Bytes compare in the same order as the strings.)
    fn attr<'s>(&'s self, i: usize, buf: &'s mut ValueBuf) -> (&'s str, &'s [u8]);
}

/// Room to render an attribute value that is not a string: an `i64` (at most 20 bytes) or a
/// boolean.
pub(crate) type ValueBuf = [u8; 24];

impl KeyView for SeriesKey {
    fn name(&self) -> &str {
        &self.name
    }
    fn attr_len(&self) -> usize {
        self.attributes.len()
    }
    fn attr<'s>(&'s self, i: usize, _: &'s mut ValueBuf) -> (&'s str, &'s [u8]) {
        let (k, v) = &self.attributes[i];
        (k, v.as_bytes())
    }
}

impl Ord for dyn KeyView + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        // Same order as the derived `Ord` of `SeriesKey`: name, then the attribute
        // pairs lexicographically, then the number of attributes.
        self.name().cmp(other.name()).then_with(|| {
            let (a, b) = (self.attr_len(), other.attr_len());
            let (mut x, mut y) = ([0u8; 24], [0u8; 24]);
            for i in 0..a.min(b) {
                match self.attr(i, &mut x).cmp(&other.attr(i, &mut y)) {
                    Ordering::Equal => {}
                    o => return o,
                }
            }
            a.cmp(&b)
        })
    }
}

impl PartialOrd for dyn KeyView + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for dyn KeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for dyn KeyView + '_ {}

impl<'a> Borrow<dyn KeyView + 'a> for SeriesKey {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

/// Attributes borrowed from a request: prost's decoded list, or the borrowing decoder's
/// ([`crate::wire`], string, boolean and integer values only).
#[derive(Debug, Clone, Copy)]
pub(super) enum AttrSlice<'a> {
    Proto(&'a [KeyValue]),
    Wire(&'a [wire::Attr<'a>]),
}

impl<'a> AttrSlice<'a> {
    pub(super) fn len(self) -> usize {
        match self {
            AttrSlice::Proto(a) => a.len(),
            AttrSlice::Wire(a) => a.len(),
        }
    }

    /// The key of attribute `i` (`i < len`).
    pub(super) fn key(self, i: usize) -> &'a str {
        match self {
            AttrSlice::Proto(a) => &a[i].key,
            AttrSlice::Wire(a) => a[i].key,
        }
    }

    /// The value of attribute `i` when it is a string, integer or boolean, rendered like
    /// [`render_value`] (integers into `buf`); `None` for other kinds, which are rendered
    /// into an owned key.
    pub(super) fn scalar<'s>(self, i: usize, buf: &'s mut ValueBuf) -> Option<&'s [u8]>
    where
        'a: 's,
    {
        let v = match self {
            AttrSlice::Proto(a) => match a[i].value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => wire::Scalar::Str(s),
                Some(any_value::Value::BoolValue(b)) => wire::Scalar::Bool(*b),
                Some(any_value::Value::IntValue(i)) => wire::Scalar::Int(*i),
                _ => return None,
            },
            AttrSlice::Wire(a) => a[i].value,
        };
        Some(match v {
            wire::Scalar::Str(s) => s.as_bytes(),
            wire::Scalar::Bool(true) => b"true",
            wire::Scalar::Bool(false) => b"false",
            wire::Scalar::Int(i) => render_int(i, buf),
        })
    }

    /// The value of attribute `i` rendered as a label string.
    pub(super) fn render(self, i: usize) -> String {
        match self {
            AttrSlice::Proto(a) => render_value(a[i].value.as_ref()),
            AttrSlice::Wire(_) => {
                let mut buf = [0u8; 24];
                // A string's bytes or ASCII: always valid UTF-8.
                String::from_utf8_lossy(self.scalar(i, &mut buf).unwrap_or(b"")).into_owned()
            }
        }
    }
}

/// A series identity borrowed from the request: string, integer or boolean attributes with distinct
/// keys, visited in key order through `order` (indices into `attrs`).
#[derive(Debug, Clone)]
pub(super) struct BorrowedKey<'a> {
    pub(super) name: &'a str,
    pub(super) attrs: AttrSlice<'a>,
    pub(super) order: [u8; MAX_ATTRIBUTES],
}

impl KeyView for BorrowedKey<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn attr_len(&self) -> usize {
        self.attrs.len()
    }
    fn attr<'s>(&'s self, i: usize, buf: &'s mut ValueBuf) -> (&'s str, &'s [u8]) {
        let j = usize::from(self.order[i]);
        (self.attrs.key(j), self.attrs.scalar(j, buf).unwrap_or(b""))
    }
}

/// The bytes of `i.to_string()`, without allocating.
pub(super) fn render_int(i: i64, buf: &mut ValueBuf) -> &[u8] {
    let mut n = i.unsigned_abs();
    let mut at = buf.len();
    loop {
        at -= 1;
        // `n % 10 < 10`.
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if i < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

impl<'a> BorrowedKey<'a> {
    /// The borrowed identity, when every attribute is a string within the size limits and
    /// the keys are distinct (the common case); `None` otherwise.
    pub(super) fn new(name: &'a str, attrs: AttrSlice<'a>) -> Option<Self> {
        if attrs.len() > MAX_ATTRIBUTES {
            return None;
        }
        let mut order = [0u8; MAX_ATTRIBUTES];
        let mut buf = [0u8; 24];
        for i in 0..attrs.len() {
            let key = attrs.key(i);
            let v = attrs.scalar(i, &mut buf)?;
            if key.len() > MAX_NAME_BYTES || v.len() > MAX_VALUE_BYTES {
                return None;
            }
            // Insertion sort by key (already sorted input: one comparison per attribute).
            let mut j = i;
            while j > 0 && attrs.key(usize::from(order[j - 1])) > key {
                order[j] = order[j - 1];
                j -= 1;
            }
            if j > 0 && attrs.key(usize::from(order[j - 1])) == key {
                return None;
            }
            // `i < MAX_ATTRIBUTES <= 256`.
            order[j] = i as u8;
        }
        Some(BorrowedKey { name, attrs, order })
    }

    pub(super) fn to_owned_key(&self) -> SeriesKey {
        SeriesKey {
            name: self.name.to_owned(),
            attributes: (0..self.attrs.len())
                .map(|i| {
                    let mut buf = [0u8; 24];
                    let (k, v) = self.attr(i, &mut buf);
                    // `v` is a string's bytes or ASCII digits: always valid UTF-8.
                    (k.to_owned(), String::from_utf8_lossy(v).into_owned())
                })
                .collect(),
        }
    }
}

/// The identity of an update: borrowed from the request, or owned when attributes needed
/// rendering (non-string values, duplicate keys).
#[derive(Debug, Clone)]
pub(super) enum UpdateKey<'a> {
    Borrowed(BorrowedKey<'a>),
    Owned(SeriesKey),
}

impl UpdateKey<'_> {
    pub(super) fn view(&self) -> &dyn KeyView {
        match self {
            UpdateKey::Borrowed(k) => k,
            UpdateKey::Owned(k) => k,
        }
    }

    pub(super) fn into_owned(self) -> SeriesKey {
        match self {
            UpdateKey::Borrowed(k) => k.to_owned_key(),
            UpdateKey::Owned(k) => k,
        }
    }

    /// Approximate bytes of the identity, as counted by [`approx_bytes`].
    pub(super) fn approx_bytes(&self) -> usize {
        let v = self.view();
        v.name().len()
            + (0..v.attr_len())
                .map(|i| {
                    let mut buf = [0u8; 24];
                    let (k, v) = v.attr(i, &mut buf);
                    k.len() + v.len() + 48
                })
                .sum::<usize>()
    }
}
