//! The only unsafe code of stall stacks (a leaf: `threads` and `stacks` use it): a thread-directed signal whose handler copies the
//! interrupted thread's registers and a bounded slice of its stack into one preallocated buffer.
//!
//! Why unsafe is needed: installing a signal handler (`sigaction`), sending a signal to one
//! thread (`tgkill`), reading the `ucontext_t` the kernel hands the handler, reading the stack
//! memory of another thread and asking a thread for its stack bounds (`pthread_getattr_np`)
//! have no safe wrapper in std.
//!
//! What keeps it sound:
//! * The handler does only async-signal-safe work: atomics, `clock_gettime`, one bounded copy
//!   of the interrupted thread's own stack (between its stack pointer and the top of the stack
//!   range recorded for that thread) by `process_vm_readv` on this process: the kernel copies,
//!   so a page that is not mapped fails the call instead of faulting, and the copy holds plain
//!   initialized bytes even where the stack had padding (a `memcpy` is the fallback where a
//!   sandbox forbids the call), and it saves and restores `errno`. It never allocates, locks, unwinds or symbolizes (the deadlocks of
//!   unwinding inside a handler: `dl_iterate_phdr` and allocator locks).
//! * One capture at a time (a mutex held by the requesting thread, never by the handler), and a
//!   state word (`IDLE → ARMED → WRITING → DONE`): the handler writes only after winning
//!   `ARMED → WRITING` on the targeted thread; the requester reads the buffer only in `DONE`,
//!   and takes a late request back with `ARMED → IDLE`, so a signal that arrives after the
//!   requester gave up writes nothing.
//! * An existing handler for the chosen signal is never replaced: installation fails instead.
//! * `SA_RESTART`: an interrupted blocking call resumes, except where Linux never restarts
//!   one (socket calls with a timeout, `epoll_wait`, `nanosleep` which std resumes itself):
//!   those return `EINTR` once, as they do under any sampling profiler.

#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Bytes of stack copied per capture (from the stack pointer upwards).
pub(crate) const STACK_COPY_BYTES: usize = 64 * 1024;

const IDLE: u8 = 0;
const ARMED: u8 = 1;
const WRITING: u8 = 2;
const DONE: u8 = 3;

/// The registers the unwinder needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Regs {
    pub(crate) pc: u64,
    pub(crate) sp: u64,
    pub(crate) fp: u64,
}

/// One thread's registers and the copied stack slice, starting at `regs.sp`.
#[derive(Debug, Clone)]
pub(crate) struct RawStack {
    pub(crate) regs: Regs,
    pub(crate) bytes: Vec<u8>,
    /// The copy stopped at [`STACK_COPY_BYTES`] before the top of the stack.
    pub(crate) cut: bool,
    /// Time spent in the handler (the interrupted thread's pause, without the kernel's part).
    pub(crate) handler: Duration,
}

/// Why the handler could not be installed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InstallError {
    /// Not a real-time signal.
    #[error("signal {0} is not a real-time signal (SIGRTMIN..=SIGRTMAX)")]
    NotRealtime(i32),
    /// Someone else handles this signal.
    #[error("signal {0} already has a handler; choose another with stall_stack_signal")]
    InUse(i32),
    /// loopwatch already uses another signal in this process.
    #[error("loopwatch already captures stacks with signal {0} in this process")]
    Other(i32),
    /// `sigaction` failed.
    #[error("sigaction: {0}")]
    Sigaction(std::io::Error),
}

/// Why one capture failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CaptureError {
    /// The thread no longer exists.
    #[error("thread {0} has exited")]
    Gone(i32),
    /// `tgkill` failed otherwise.
    #[error("tgkill: {0}")]
    Signal(std::io::Error),
    /// The handler did not run within the wait.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A handler from an earlier, abandoned capture is still writing.
    #[error("an earlier capture is still being written")]
    Busy,
    /// The application replaced loopwatch's handler after it was installed.
    #[error(
        "signal {0} no longer runs loopwatch's handler (the application replaced it); stall stacks are off"
    )]
    Replaced(i32),
}

struct Slot {
    state: AtomicU8,
    target: AtomicI32,
    lo: AtomicUsize,
    hi: AtomicUsize,
    pc: AtomicU64,
    sp: AtomicU64,
    fp: AtomicU64,
    len: AtomicUsize,
    handler_ns: AtomicU64,
    stack: UnsafeCell<[u8; STACK_COPY_BYTES]>,
}

// SAFETY: `stack` is written only by the handler between winning ARMED → WRITING and storing
// DONE, and read only by the requester (holding REQUEST) after seeing DONE; see the module doc.
unsafe impl Sync for Slot {}

static SLOT: Slot = Slot {
    state: AtomicU8::new(IDLE),
    target: AtomicI32::new(0),
    lo: AtomicUsize::new(0),
    hi: AtomicUsize::new(0),
    pc: AtomicU64::new(0),
    sp: AtomicU64::new(0),
    fp: AtomicU64::new(0),
    len: AtomicUsize::new(0),
    handler_ns: AtomicU64::new(0),
    stack: UnsafeCell::new([0; STACK_COPY_BYTES]),
};

/// Serializes captures (across loopwatch instances of the process).
static REQUEST: Mutex<()> = Mutex::new(());
/// The signal whose handler is installed, 0 = none.
static INSTALLED: Mutex<i32> = Mutex::new(0);

/// The default signal: `SIGRTMIN + 6` (glibc keeps the first real-time signals for itself,
/// `SIGRTMIN()` already skips them; profilers use SIGPROF).
pub(crate) fn default_signal() -> i32 {
    libc::SIGRTMIN() + 6
}

/// The calling thread's OS id.
pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// The calling thread's stack range `lo..hi` (the stack grows down from `hi`).
pub(crate) fn current_stack() -> Option<(usize, usize)> {
    // SAFETY: attr is initialized by pthread_getattr_np before use and destroyed once.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        (rc == 0 && !addr.is_null()).then(|| (addr as usize, addr as usize + size))
    }
}

/// Installs the handler for `sig` (once per process; again with the same signal is a no-op).
pub(crate) fn install(sig: i32) -> Result<(), InstallError> {
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if *installed == sig {
        return Ok(());
    }
    if *installed != 0 {
        return Err(InstallError::Other(*installed));
    }
    if !(libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&sig) {
        return Err(InstallError::NotRealtime(sig));
    }
    let handler = our_handler();
    let old = current_handler(sig)
        .ok_or_else(|| InstallError::Sigaction(std::io::Error::last_os_error()))?;
    if old != libc::SIG_DFL && old != libc::SIG_IGN {
        return Err(InstallError::InUse(sig));
    }
    // SAFETY: sigaction with valid, zero-initialized structs; the handler is async-signal-safe.
    unsafe {
        let mut new: libc::sigaction = std::mem::zeroed();
        new.sa_sigaction = handler;
        new.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut new.sa_mask);
        if libc::sigaction(sig, &new, std::ptr::null_mut()) != 0 {
            return Err(InstallError::Sigaction(std::io::Error::last_os_error()));
        }
    }
    *installed = sig;
    Ok(())
}

fn our_handler() -> libc::sighandler_t {
    on_signal as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
        as libc::sighandler_t
}

/// The handler `sig` runs now; `None` when `sigaction` fails.
fn current_handler(sig: i32) -> Option<libc::sighandler_t> {
    // SAFETY: reads the current action into a valid, zero-initialized struct.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        (libc::sigaction(sig, std::ptr::null(), &mut old) == 0).then_some(old.sa_sigaction)
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec; it is async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

extern "C" fn on_signal(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: errno is thread-local; it is restored before returning to the interrupted code.
    let errno = unsafe { *libc::__errno_location() };
    if SLOT.target.load(Ordering::Acquire) == gettid()
        && SLOT
            .state
            .compare_exchange(ARMED, WRITING, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    {
        let t0 = monotonic_ns();
        // SAFETY: the kernel passes a valid ucontext_t for SA_SIGINFO handlers; this thread owns
        // WRITING; the copied range lies between this thread's stack pointer and its stack top.
        unsafe { copy_context(ctx.cast::<libc::ucontext_t>()) };
        SLOT.handler_ns
            .store(monotonic_ns().saturating_sub(t0), Ordering::Relaxed);
        SLOT.state.store(DONE, Ordering::Release);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// # Safety
/// `uc` is the handler's context; the caller owns the WRITING state.
unsafe fn copy_context(uc: *const libc::ucontext_t) {
    // SAFETY: `uc` is valid per the caller.
    let gregs = unsafe { &(*uc).uc_mcontext.gregs };
    let pc = gregs[libc::REG_RIP as usize] as u64;
    let sp = gregs[libc::REG_RSP as usize] as u64;
    let fp = gregs[libc::REG_RBP as usize] as u64;
    SLOT.pc.store(pc, Ordering::Relaxed);
    SLOT.sp.store(sp, Ordering::Relaxed);
    SLOT.fp.store(fp, Ordering::Relaxed);
    let (lo, hi) = (
        SLOT.lo.load(Ordering::Relaxed),
        SLOT.hi.load(Ordering::Relaxed),
    );
    let sp = sp as usize;
    // A stack pointer outside the recorded range (an alternate signal stack, a coroutine):
    // registers only.
    let len = if sp >= lo && sp < hi {
        (hi - sp).min(STACK_COPY_BYTES)
    } else {
        0
    };
    let len = if len > 0 {
        let dst = SLOT.stack.get().cast::<u8>();
        let local = libc::iovec {
            iov_base: dst.cast(),
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: sp as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: the kernel copies [sp, sp + len) of this process into the slot's buffer (owned
        // by this handler in WRITING, len <= its size), failing with EFAULT instead of faulting
        // on an unmapped page; the copied bytes are then plain initialized memory.
        let got = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        match usize::try_from(got) {
            Ok(n) => n.min(len),
            // A sandbox that forbids process_vm_readv: copy directly. [sp, sp + len) is this
            // thread's mapped stack, and the destination is as above.
            Err(_) => {
                // SAFETY: see the two comments above.
                unsafe { std::ptr::copy_nonoverlapping(sp as *const u8, dst, len) };
                len
            }
        }
    } else {
        0
    };
    SLOT.len.store(len, Ordering::Relaxed);
}

/// Interrupts thread `tid` (stack range `stack`) with `sig` and returns its registers and
/// stack copy, waiting at most `wait` for the handler. The handler must be installed.
pub(crate) fn capture(
    sig: i32,
    tid: i32,
    stack: (usize, usize),
    wait: Duration,
) -> Result<RawStack, CaptureError> {
    let _one = REQUEST.lock().unwrap_or_else(|e| e.into_inner());
    // An application may install its own handler after loopwatch's (or reset it to the
    // default, which for a real-time signal terminates the process): the signal is then
    // never sent.
    if current_handler(sig) != Some(our_handler()) {
        return Err(CaptureError::Replaced(sig));
    }
    match SLOT.state.load(Ordering::Acquire) {
        WRITING => return Err(CaptureError::Busy),
        _ => SLOT.state.store(IDLE, Ordering::Release),
    }
    SLOT.lo.store(stack.0, Ordering::Relaxed);
    SLOT.hi.store(stack.1, Ordering::Relaxed);
    SLOT.len.store(0, Ordering::Relaxed);
    SLOT.target.store(tid, Ordering::Release);
    SLOT.state.store(ARMED, Ordering::Release);
    // SAFETY: tgkill with this process's id; a wrong tid is reported as an error.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid() as libc::c_long,
            tid as libc::c_long,
            sig as libc::c_long,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        SLOT.state.store(IDLE, Ordering::Release);
        return Err(match e.raw_os_error() {
            Some(libc::ESRCH) => CaptureError::Gone(tid),
            _ => CaptureError::Signal(e),
        });
    }
    let deadline = Instant::now() + wait;
    let mut spins = 0u32;
    loop {
        match SLOT.state.load(Ordering::Acquire) {
            DONE => break,
            ARMED
                if Instant::now() >= deadline
                    && SLOT
                        .state
                        .compare_exchange(ARMED, IDLE, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok() =>
            {
                return Err(CaptureError::Timeout(wait));
            }
            WRITING if Instant::now() >= deadline + wait => return Err(CaptureError::Busy),
            _ => {}
        }
        spins += 1;
        if spins < 200 {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    let len = SLOT.len.load(Ordering::Relaxed).min(STACK_COPY_BYTES);
    let mut bytes = vec![0u8; len];
    // SAFETY: DONE: the handler finished writing and no other handler can start before the
    // next ARMED, which only this thread (holding REQUEST) stores.
    unsafe {
        std::ptr::copy_nonoverlapping(SLOT.stack.get().cast::<u8>(), bytes.as_mut_ptr(), len)
    };
    let sp = SLOT.sp.load(Ordering::Relaxed);
    let raw = RawStack {
        regs: Regs {
            pc: SLOT.pc.load(Ordering::Relaxed),
            sp,
            fp: SLOT.fp.load(Ordering::Relaxed),
        },
        cut: len == STACK_COPY_BYTES && (sp as usize).saturating_add(len) < stack.1,
        bytes,
        handler: Duration::from_nanos(SLOT.handler_ns.load(Ordering::Relaxed)),
    };
    SLOT.state.store(IDLE, Ordering::Release);
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" fn app_handler(_: libc::c_int) {}

    #[test]
    fn a_signal_the_application_handles_is_refused_and_its_handler_kept() {
        let sig = libc::SIGRTMIN() + 9;
        let handler = app_handler as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: installs an empty, async-signal-safe handler with valid structs.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
        }
        assert!(matches!(install(sig), Err(InstallError::InUse(s)) if s == sig));
        // SAFETY: reads the current action into a valid struct.
        let kept = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(sig, std::ptr::null(), &mut old);
            old.sa_sigaction
        };
        assert_eq!(kept, handler);
        assert!(matches!(
            install(libc::SIGUSR1),
            Err(InstallError::NotRealtime(_))
        ));
    }
}
