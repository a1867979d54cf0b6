//! The ways a handler blocks its thread in real services, for `GET /block?how=…`.
//!
//! Each is a named function that is never inlined, so a stall stack names it the way it names
//! the user's own blocking code. Each blocks for the duration it is given and then returns.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How `/block` blocks its thread.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum How {
    /// `std::thread::sleep`.
    #[default]
    Sleep,
    /// Waits on a `std::sync::Mutex` that another thread holds.
    Mutex,
    /// A blocking `std::net` socket read with no data arriving.
    Net,
    /// A blocking `std::fs::File` read of a pipe whose writer answers late (a slow disk or a
    /// network file system looks the same from the stack: a thread in `read`).
    File,
}

/// Blocks the calling thread for `d` in the way `how` names.
pub(crate) fn block(how: How, d: Duration) {
    match how {
        How::Sleep => std::thread::sleep(d),
        How::Mutex => wait_on_mutex(d),
        How::Net => read_socket(d),
        How::File => read_slow_file(d),
    }
}

#[inline(never)]
fn wait_on_mutex(d: Duration) {
    let lock = Arc::new(Mutex::new(()));
    let (held_tx, held) = std::sync::mpsc::channel();
    let holder = {
        let lock = Arc::clone(&lock);
        std::thread::spawn(move || {
            let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            let _ = held_tx.send(());
            std::thread::sleep(d);
        })
    };
    // Wait until the other thread holds the lock, so this thread's lock() is the one that blocks.
    let _ = held.recv();
    drop(lock.lock().unwrap_or_else(|e| e.into_inner()));
    let _ = holder.join();
}

#[inline(never)]
fn read_socket(d: Duration) {
    let Ok(socket) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return std::thread::sleep(d);
    };
    let end = Instant::now() + d;
    // A socket read with a timeout is not restarted after a signal (SO_RCVTIMEO): it returns
    // `Interrupted`, which careful code retries, as here.
    while let Some(left) = end
        .checked_duration_since(Instant::now())
        .filter(|l| !l.is_zero())
    {
        if socket.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match socket.recv(&mut [0u8; 16]) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            _ => return,
        }
    }
}

#[inline(never)]
fn read_slow_file(d: Duration) {
    let Ok((reader, mut writer)) = std::io::pipe() else {
        return std::thread::sleep(d);
    };
    let late_writer = std::thread::spawn(move || {
        std::thread::sleep(d);
        let _ = std::io::Write::write_all(&mut writer, b"done");
    });
    let mut file = std::fs::File::from(std::os::fd::OwnedFd::from(reader));
    // read_to_end returns once the writer has written and closed its end.
    let _ = file.read_to_end(&mut Vec::new());
    let _ = late_writer.join();
}
