//! Names return addresses (`backtrace::resolve`: the symbol table, and `file:line` from the
//! line tables where the binary has them), trims the frames a user does not read, and renders
//! the `code.stacktrace` text.

use std::fmt::Write as _;

/// One frame as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    /// Demangled function name, without the hash; `??` when unknown.
    pub(crate) function: String,
    /// Source file, when the binary has line tables.
    pub(crate) file: Option<String>,
    /// Source line, when the binary has line tables.
    pub(crate) line: Option<u32>,
}

/// Names `addrs` (innermost first); an inlined call gives several frames for one address.
pub(crate) fn symbolize(addrs: &[u64]) -> Vec<Frame> {
    let mut out = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        let before = out.len();
        let ptr = std::ptr::without_provenance_mut::<std::ffi::c_void>(addr as usize);
        backtrace::resolve(ptr, |sym| {
            out.push(Frame {
                function: sym
                    .name()
                    .map_or_else(|| format!("{addr:#x}"), |n| format!("{n:#}")),
                file: sym.filename().map(|p| p.display().to_string()),
                line: sym.lineno(),
            });
        });
        if out.len() == before {
            out.push(Frame {
                function: format!("?? {addr:#x}{}", vdso_note(addr)),
                file: None,
                line: None,
            });
        }
    }
    out
}

/// ` (vdso)` when `addr` is in the kernel's vDSO (clock reads land there), which has no file
/// to name it from.
fn vdso_note(addr: u64) -> &'static str {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let in_vdso = maps.lines().filter(|l| l.ends_with("[vdso]")).any(|l| {
        let range = l.split_whitespace().next().unwrap_or("");
        let mut it = range
            .split('-')
            .map(|v| u64::from_str_radix(v, 16).unwrap_or(0));
        let (lo, hi) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
        (lo..hi).contains(&addr)
    });
    if in_vdso { " (vdso)" } else { "" }
}

/// Gives inlined async fn and closure bodies (named `{async_fn#0}`, `{closure#0}` without
/// their path in the debug info) the path that their caller's frame spells in its type
/// parameters (`my_crate::handler::{async_fn_env#0}`), so that the frame names the user's
/// function.
pub(crate) fn qualify(frames: &mut [Frame]) {
    for i in 0..frames.len().saturating_sub(1) {
        let bare = &frames[i].function;
        let Some(kind) = ["{async_fn#", "{closure#"]
            .into_iter()
            .find(|k| bare.starts_with(k))
        else {
            continue;
        };
        if bare.contains('<') || bare.contains("::") {
            continue;
        }
        let env = if kind == "{async_fn#" {
            "::{async_fn_env#"
        } else {
            "::{closure_env#"
        };
        let caller = &frames[i + 1].function;
        let Some(end) = caller.find(env) else {
            continue;
        };
        let start = caller[..end]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |p| p + 1);
        let path = &caller[start..end];
        if !path.is_empty() {
            frames[i].function = format!("{path}::{bare}");
        }
    }
}

/// Whether the frame belongs to the signal machinery or loopwatch itself.
fn ours(f: &Frame) -> bool {
    f.function.starts_with("loopwatch::")
        || f.function.starts_with("<loopwatch::")
        || f.function.contains("__restore_rt")
}

/// Drops loopwatch's and the signal trampoline's frames from the top; keeps everything below
/// the first other frame (the runtime's frames below the user's stay).
pub(crate) fn trim(frames: Vec<Frame>) -> Vec<Frame> {
    let skip = frames.iter().take_while(|f| ours(f)).count();
    if skip == frames.len() {
        return frames;
    }
    frames.into_iter().skip(skip).collect()
}

/// Whether the stack is a tokio worker waiting for work (parked), not running any. Only the
/// frames inside the first task poll count: a thread that polls a task is running it, whatever
/// a frame further out (or a stale word the unwinder's scan took for one) says.
pub(crate) fn parked(frames: &[Frame]) -> bool {
    let polling = frames
        .iter()
        .position(|f| {
            f.function.starts_with("tokio::runtime::task::raw::poll")
                || f.function
                    .starts_with("tokio::runtime::task::harness::poll_future")
        })
        .unwrap_or(frames.len());
    let frames = &frames[..polling];
    frames.iter().any(|f| {
        let n = f.function.as_str();
        n.starts_with("tokio::runtime::scheduler::multi_thread::park::")
            || n.starts_with("tokio::runtime::scheduler::multi_thread::worker::Context::park")
            || n.starts_with("tokio::runtime::scheduler::current_thread::Context::park")
            || n.starts_with("tokio::runtime::blocking::pool::Inner::run")
                && frames.iter().any(|g| {
                    g.function
                        .starts_with("std::sync::poison::condvar::Condvar::wait")
                })
    })
}

/// The `code.stacktrace` text: one numbered line per frame, `at file:line` below it.
pub(crate) fn render(frames: &[Frame], truncated: bool) -> String {
    let mut s = String::new();
    for (i, f) in frames.iter().enumerate() {
        let _ = writeln!(s, "{i:4}: {}", f.function);
        if let Some(file) = &f.file {
            match f.line {
                Some(l) => {
                    let _ = writeln!(s, "             at {file}:{l}");
                }
                None => {
                    let _ = writeln!(s, "             at {file}");
                }
            }
        }
    }
    if truncated {
        s.push_str("      ... (truncated)\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> Frame {
        Frame {
            function: name.into(),
            file: None,
            line: None,
        }
    }

    #[test]
    fn trim_drops_our_frames_on_top_and_keeps_the_runtime_below() {
        let frames = vec![
            f("loopwatch::stacks::x"),
            f("app::spin"),
            f("loopwatch::probe::y"),
            f("tokio::runtime::task::harness::poll"),
        ];
        let t = trim(frames);
        assert_eq!(t[0].function, "app::spin");
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn a_thread_polling_a_task_is_not_parked_whatever_lies_further_out() {
        let parked_worker = vec![
            f("epoll_wait"),
            f("tokio::runtime::scheduler::current_thread::Context::park"),
            f("main"),
        ];
        assert!(parked(&parked_worker));
        let running = vec![
            f("std::thread::sleep"),
            f("app::block"),
            f("tokio::runtime::task::harness::poll_future"),
            f("tokio::runtime::task::raw::poll"),
            f("app::main"),
            // A stale word past the end of the copy.
            f("tokio::runtime::scheduler::current_thread::Context::park"),
        ];
        assert!(!parked(&running));
        let idle_blocking = vec![
            f("std::sys::sync::condvar::futex::Condvar::wait"),
            f("std::sync::poison::condvar::Condvar::wait"),
            f("tokio::runtime::blocking::pool::Inner::run"),
        ];
        assert!(parked(&idle_blocking));
    }

    #[test]
    fn bare_async_fn_frames_take_the_path_from_their_caller() {
        let mut frames = vec![
            f("std::thread::sleep"),
            f("{async_fn#0}"),
            f(
                "{async_block#0}<fn(Query<P>) -> app::block::{async_fn_env#0}, app::block::{async_fn_env#0}>",
            ),
        ];
        qualify(&mut frames);
        assert_eq!(frames[1].function, "app::block::{async_fn#0}");
        assert!(
            frames[2].function.starts_with("{async_block#0}<"),
            "left as it is"
        );
    }

    #[test]
    fn render_numbers_frames_and_marks_truncation() {
        let mut a = f("app::spin");
        a.file = Some("src/main.rs".into());
        a.line = Some(7);
        let s = render(&[a, f("main")], true);
        assert_eq!(
            s,
            "   0: app::spin\n             at src/main.rs:7\n   1: main\n      ... (truncated)\n"
        );
    }

    #[test]
    fn this_function_is_named() {
        let here = this_function_is_named as *const () as u64;
        let frames = symbolize(&[here + 1]);
        assert!(
            frames
                .iter()
                .any(|f| f.function.contains("this_function_is_named")),
            "{frames:?}"
        );
    }
}
