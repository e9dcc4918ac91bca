//! Reused scratch buffers, so that the hot path of the kernels does not allocate.
//!
//! A small process-wide pool of `Vec<f32>`: [`take`] hands out a buffer of at least the asked
//! length (growing one if needed) and the guard gives it back on drop. A pool rather than
//! thread-locals because the kernels run inside rayon, where a thread blocked in a nested
//! parallel call may pick up another task of the same op.
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

/// At most this many idle buffers are kept.
const MAX_IDLE: usize = 8;

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A scratch buffer of `len` floats with unspecified contents, returned to the pool on drop.
pub struct Scratch {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

/// A scratch buffer of `len` floats (see [`Scratch`]).
pub fn take(len: usize) -> Scratch {
    take_from(len, 0)
}

/// [`take`] whose first float is 64-byte aligned (a cache line, an AVX-512 vector), so that
/// whole-vector accesses at multiples of 16 floats from it never straddle two lines.
pub fn take_aligned(len: usize) -> Scratch {
    let mut s = take_from(len, 15);
    s.start = s.buf.as_ptr().align_offset(64).min(15);
    s
}

fn take_from(len: usize, slack: usize) -> Scratch {
    let len_in = len + slack;
    let mut buf = {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        // The smallest idle buffer that fits, else the largest one (grown below).
        let fit =
            (0..pool.len()).filter(|&i| pool[i].len() >= len_in).min_by_key(|&i| pool[i].len());
        let pick = fit.or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].len()));
        pick.map(|i| pool.swap_remove(i)).unwrap_or_default()
    };
    if buf.len() < len_in {
        buf.resize(len_in, 0.0);
    }
    Scratch { buf, start: 0, len }
}

impl Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < MAX_IDLE {
            pool.push(buf);
        } else if let Some(i) = (0..pool.len()).min_by_key(|&i| pool[i].len()) {
            // Keep the larger buffers.
            if pool[i].len() < buf.len() {
                pool[i] = buf;
            }
        }
    }
}
