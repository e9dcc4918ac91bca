//! [`Disjoint`]: one mutable buffer shared by parallel tasks, each writing its own part.
//!
//! The kernels split an output (a convolution's tiles, Winograd's transform planes, attention's
//! heads) over rayon tasks that write disjoint parts of one buffer: rows of a plane, columns of
//! a head, strided blocks a matrix product fills. Rust's `&mut [f32]` cannot be shared that
//! way, and `split_at_mut` does not express strided parts, so the tasks share this handle
//! instead. Its safety argument, made once here:
//!
//! - *Validity*: the handle borrows the whole buffer mutably for `'a` (it is made from a
//!   `&'a mut [f32]`), so the memory stays allocated and nobody outside the tasks touches it
//!   while any copy of the handle lives; every slice it hands out is bounds-checked against
//!   the buffer.
//! - *Exclusivity*: what the borrow checker cannot see is which task writes which part. That
//!   is the obligation of [`Disjoint::slice`] and of the raw pointers [`Disjoint::ptr`] gives
//!   to `unsafe` products: each caller names the part it owns in its `SAFETY:` comment, and no
//!   two tasks own overlapping parts. Reads of another task's part are not allowed either.
//!
//! With both, sharing the handle across threads (`Send` + `Sync`) is sound: it is a `&mut`
//! split into parts that the tasks' own arguments prove disjoint.
use std::marker::PhantomData;

/// A `&'a mut [f32]` shared by tasks that write disjoint parts of it (see the module).
#[derive(Clone, Copy)]
pub struct Disjoint<'a> {
    ptr: *mut f32,
    len: usize,
    _buf: PhantomData<&'a mut [f32]>,
}

// SAFETY: a `Disjoint` is a mutable borrow of an f32 buffer (which is Send and Sync) that its
// tasks split into disjoint parts; every access through it is `unsafe` and argued disjoint by
// its caller (module documentation), so sharing it between threads adds no data race.
unsafe impl Send for Disjoint<'_> {}
// SAFETY: as for `Send`.
unsafe impl Sync for Disjoint<'_> {}

impl<'a> Disjoint<'a> {
    /// Shares `buf` (borrowed mutably for as long as any copy of the handle lives).
    pub fn new(buf: &'a mut [f32]) -> Self {
        Disjoint { ptr: buf.as_mut_ptr(), len: buf.len(), _buf: PhantomData }
    }

    /// Shares the `len` floats at `ptr` as [`new`](Self::new) shares a slice.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` floats for `'a`, and nobody but the
    /// tasks sharing the handle may access them meanwhile (what `new`'s borrow guarantees).
    pub unsafe fn from_raw(ptr: *mut f32, len: usize) -> Self {
        Disjoint { ptr, len, _buf: PhantomData }
    }

    /// The handle for the buffer from `off` on (panics past the end).
    pub fn offset(self, off: usize) -> Disjoint<'a> {
        assert!(off <= self.len, "Disjoint::offset: {off} past the buffer's {}", self.len);
        // SAFETY: `off <= len`, inside (or one past) the borrowed buffer.
        Disjoint { ptr: unsafe { self.ptr.add(off) }, len: self.len - off, _buf: PhantomData }
    }

    /// The address `off` floats into the buffer (panics past the end), for the `unsafe` matrix
    /// products that write strided parts; what they may write is their callers' argument.
    pub fn ptr(self, off: usize) -> *mut f32 {
        self.offset(off).ptr
    }

    /// The `len` floats from `off` on (panics past the end of the buffer).
    ///
    /// # Safety
    /// No other task reads or writes any of them while the returned slice lives.
    #[inline(always)]
    pub unsafe fn slice(self, off: usize, len: usize) -> &'a mut [f32] {
        assert!(
            off <= self.len && len <= self.len - off,
            "Disjoint::slice: {off}..{} past the buffer's {}",
            off + len,
            self.len
        );
        // SAFETY: in bounds (checked above) of the buffer borrowed for 'a; no other access to
        // these floats while the slice lives (the caller's obligation).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off), len) }
    }
}
