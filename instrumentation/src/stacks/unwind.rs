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
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module};
use object::{Object, ObjectSection, ObjectSegment};

use crate::signal::RawStack;

/// Most frames kept per stack.
pub(crate) const MAX_FRAMES: usize = 128;
/// Stack scans per walk, where the unwind information gives out.
const MAX_SCANS: u32 = 2;
/// How far above the last good frame a scan looks.
const SCAN_BYTES: u64 = 16 * 1024;
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
    /// Executable mappings of the modules.
    exec: Vec<Range<u64>>,
}

impl Unwinder {
    /// Loads the module list of this process.
    pub(crate) fn new() -> Self {
        let mut u = Unwinder {
            inner: UnwinderX86_64::new(),
            cache: CacheX86_64::new(),
            exec: Vec::new(),
        };
        u.load();
        u
    }

    fn load(&mut self) {
        self.inner = UnwinderX86_64::new();
        self.exec.clear();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        for (path, m) in parse_maps(&maps) {
            if let Some(module) = load_module(&path, &m) {
                self.exec.extend(m.exec.iter().cloned());
                self.inner.add_module(module);
            }
        }
    }

    /// Unwinds `raw`; reloads the module list once if its pc is in no known module. Where the
    /// unwind information gives out (code without usable CFI), the walk scans the stack above
    /// the last good frame for the first word that is a code address of a known module, and goes
    /// on from there, at most [`MAX_SCANS`] times.
    pub(crate) fn unwind(&mut self, raw: &RawStack) -> Unwound {
        if !self.exec.iter().any(|r| r.contains(&raw.regs.pc)) {
            self.load();
        }
        let base = raw.regs.sp;
        let bytes = &raw.bytes;
        let end = base.saturating_add(bytes.len() as u64);
        let word = |addr: u64| -> Option<u64> {
            let off = usize::try_from(addr.checked_sub(base)?).ok()?;
            let w = bytes.get(off..off.checked_add(8)?)?;
            Some(u64::from_le_bytes(w.try_into().ok()?))
        };
        let mut read_stack = |addr: u64| word(addr).ok_or(());
        let mut regs = UnwindRegsX86_64::new(raw.regs.pc, raw.regs.sp, raw.regs.fp);
        let mut addr = FrameAddress::from_instruction_pointer(raw.regs.pc);
        let mut out = Unwound::default();
        let mut scans = 0;
        loop {
            if out.addrs.len() == MAX_FRAMES {
                out.truncated = true;
                break;
            }
            out.addrs.push(addr.address_for_lookup());
            let next =
                match self
                    .inner
                    .unwind_frame(addr, &mut regs, &mut self.cache, &mut read_stack)
                {
                    Ok(Some(ret)) => Some(ret),
                    Ok(None) => break,
                    // The frame's data lies beyond the copied slice: the copy ends here. A
                    // scan would find stale words, not callers.
                    Err(framehop::Error::CouldNotReadStack(at)) if at >= end => None,
                    Err(_) if scans < MAX_SCANS => {
                        scans += 1;
                        self.scan(regs.sp(), &word).map(|(ret, at)| {
                            regs.set_sp(at + 8);
                            ret
                        })
                    }
                    Err(_) => None,
                };
            match next.and_then(FrameAddress::from_return_address) {
                Some(a) => {
                    regs.set_ip(a.address());
                    addr = a;
                }
                None => {
                    out.truncated = true;
                    break;
                }
            }
        }
        out
    }

    /// The first word at or above `sp` (within [`SCAN_BYTES`]) that points into code, and
    /// where it is.
    fn scan(&self, sp: u64, word: &impl Fn(u64) -> Option<u64>) -> Option<(u64, u64)> {
        (0..SCAN_BYTES / 8)
            .map(|i| sp + i * 8)
            .map_while(|at| word(at).map(|w| (w, at)))
            .find(|(w, _)| self.in_code(*w))
    }

    fn in_code(&self, addr: u64) -> bool {
        self.exec.iter().any(|r| r.contains(&addr))
    }
}

/// What `/proc/self/maps` says of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapped {
    range: Range<u64>,
    /// Start of the mapping at file offset 0.
    base: Option<u64>,
    /// The executable mappings.
    exec: Vec<Range<u64>>,
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
            exec: Vec::new(),
        });
        e.range = e.range.start.min(lo)..e.range.end.max(hi);
        if offset == 0 {
            e.base = Some(e.base.map_or(lo, |b| b.min(lo)));
        }
        if perms.contains('x') {
            e.exec.push(lo..hi);
        }
    }
    out.retain(|_, m| !m.exec.is_empty() && m.base.is_some());
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
        assert_eq!(app.exec, vec![0x5555aaa10000..0x5555aab00000]);
    }
}
