//! Unwinds a copied stack into return addresses with `framehop` (DWARF CFI from each loaded
//! module's `.eh_frame`/`.eh_frame_hdr`, frame pointers where there is none).
//!
//! The module list comes from `/proc/self/maps` and each module's ELF file (read with
//! `object`), on the `loopwatch-stacks` thread: nothing here runs in a signal handler or on the
//! stall path. The list is loaded on first use and again when a program counter falls outside
//! every known module (a library loaded later).

use std::collections::BTreeMap;
use std::ops::Range;

use framehop::Unwinder as _;
use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, Module};
use object::{Object, ObjectSection, ObjectSegment};

use super::signal::RawStack;

/// Most frames kept per stack.
pub(crate) const MAX_FRAMES: usize = 128;
/// `.text` sections larger than this are not kept for prologue analysis (memory bound).
const MAX_TEXT_BYTES: u64 = 8 << 20;

/// Return addresses (adjusted for lookup: inside the call instruction) of one stack.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Unwound {
    pub(crate) addrs: Vec<u64>,
    /// The walk stopped before the stack's end: copy bound, bad data or frame limit.
    pub(crate) truncated: bool,
}

/// framehop's unwinder over this process's modules.
pub(crate) struct Unwinder {
    inner: UnwinderX86_64<Vec<u8>>,
    cache: CacheX86_64,
    ranges: Vec<Range<u64>>,
}

impl Unwinder {
    /// Loads the module list of this process.
    pub(crate) fn new() -> Self {
        let mut u = Unwinder {
            inner: UnwinderX86_64::new(),
            cache: CacheX86_64::new(),
            ranges: Vec::new(),
        };
        u.load();
        u
    }

    fn load(&mut self) {
        self.inner = UnwinderX86_64::new();
        self.ranges.clear();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        for (path, m) in parse_maps(&maps) {
            if let Some(module) = load_module(&path, &m) {
                self.ranges.push(m.range.clone());
                self.inner.add_module(module);
            }
        }
    }

    /// Unwinds `raw`; reloads the module list once if its pc is in no known module.
    pub(crate) fn unwind(&mut self, raw: &RawStack) -> Unwound {
        if !self.ranges.iter().any(|r| r.contains(&raw.regs.pc)) {
            self.load();
        }
        let base = raw.regs.sp;
        let bytes = &raw.bytes;
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let off = usize::try_from(addr.checked_sub(base).ok_or(())?).map_err(|_| ())?;
            let word = bytes.get(off..off.checked_add(8).ok_or(())?).ok_or(())?;
            Ok(u64::from_le_bytes(word.try_into().map_err(|_| ())?))
        };
        let regs = UnwindRegsX86_64::new(raw.regs.pc, raw.regs.sp, raw.regs.fp);
        let mut iter = self
            .inner
            .iter_frames(raw.regs.pc, regs, &mut self.cache, &mut read_stack);
        let mut out = Unwound::default();
        loop {
            match iter.next() {
                Ok(Some(frame)) => {
                    if out.addrs.len() == MAX_FRAMES {
                        out.truncated = true;
                        break;
                    }
                    out.addrs.push(frame.address_for_lookup());
                }
                Ok(None) => break,
                Err(_) => {
                    out.truncated = true;
                    break;
                }
            }
        }
        out
    }
}

/// What `/proc/self/maps` says of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapped {
    range: Range<u64>,
    /// Start of the mapping at file offset 0.
    base: Option<u64>,
    executable: bool,
}

/// Files mapped into this process, by path.
fn parse_maps(text: &str) -> BTreeMap<String, Mapped> {
    let mut out: BTreeMap<String, Mapped> = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms), Some(offset), _, _, Some(path)) =
            (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if !path.starts_with('/') {
            continue;
        }
        let Some((lo, hi)) = range.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi), Ok(offset)) = (
            u64::from_str_radix(lo, 16),
            u64::from_str_radix(hi, 16),
            u64::from_str_radix(offset, 16),
        ) else {
            continue;
        };
        let e = out.entry(path.to_owned()).or_insert(Mapped {
            range: lo..hi,
            base: None,
            executable: false,
        });
        e.range = e.range.start.min(lo)..e.range.end.max(hi);
        if offset == 0 {
            e.base = Some(e.base.map_or(lo, |b| b.min(lo)));
        }
        e.executable |= perms.contains('x');
    }
    out.retain(|_, m| m.executable && m.base.is_some());
    out
}

fn load_module(path: &str, m: &Mapped) -> Option<Module<Vec<u8>>> {
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let first_vaddr = file.segments().map(|s| s.address()).min()? & !0xfff;
    let bias = m.base?.checked_sub(first_vaddr)?;
    let section = |name: &str| file.section_by_name(name);
    let svma = |s: &object::Section<'_, '_>| s.address()..s.address() + s.size();
    let eh_frame = section(".eh_frame");
    let eh_frame_hdr = section(".eh_frame_hdr");
    let text = section(".text");
    let info = ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma: text.as_ref().map(svma),
        text: text
            .as_ref()
            .filter(|t| t.size() <= MAX_TEXT_BYTES)
            .and_then(|t| t.data().ok())
            .map(<[u8]>::to_vec),
        got_svma: section(".got").as_ref().map(svma),
        eh_frame_svma: eh_frame.as_ref().map(svma),
        eh_frame: eh_frame.and_then(|s| s.data().ok()).map(<[u8]>::to_vec),
        eh_frame_hdr_svma: eh_frame_hdr.as_ref().map(svma),
        eh_frame_hdr: eh_frame_hdr.and_then(|s| s.data().ok()).map(<[u8]>::to_vec),
        ..Default::default()
    };
    Some(Module::new(path.to_owned(), m.range.clone(), bias, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_group_mappings_by_file_and_keep_executable_ones() {
        let maps = "\
5555aaa00000-5555aaa10000 r--p 00000000 08:01 12 /usr/bin/app
5555aaa10000-5555aab00000 r-xp 00010000 08:01 12 /usr/bin/app
7f0000000000-7f0000010000 r--p 00000000 08:01 13 /usr/lib/libdata.so
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]
garbage line
";
        let m = parse_maps(maps);
        assert_eq!(m.len(), 1, "{m:?}");
        let app = &m["/usr/bin/app"];
        assert_eq!(app.range, 0x5555aaa00000..0x5555aab00000);
        assert_eq!(app.base, Some(0x5555aaa00000));
    }
}
