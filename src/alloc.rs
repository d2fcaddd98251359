//! The global allocator that the binary and the benchmarks install: a
//! module of the binary (`main.rs`), not of the library, which forbids
//! unsafe code; the benchmarks include it by path.

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// mimalloc through its plain entry points wherever their blocks are
/// aligned enough, its aligned ones only beyond that (as std's `System`
/// does with glibc). The `mimalloc` crate sent every allocation through
/// `mi_malloc_aligned`, and mimalloc v3 serves that quickly only for a block
/// of at most 1 KiB that happens to be aligned: the rest (the boxed
/// connection future, read buffers, header maps that grow) took its generic
/// path, which over-allocates. Instructions per request (callgrind,
/// `benches/load/instructions.sh`, plain release build): HTTP/1.1
/// keep-alive 30,976 -> 30,420, one connection per request 42,787 ->
/// 41,542, HTTP/2 45,524 -> 45,019.
pub struct MiMalloc;

/// Every mimalloc block is at least this aligned: `MI_MAX_ALIGN_SIZE`
/// (mimalloc/types.h), and small sizes are rounded up to two words
/// (`MI_ALIGN2W`, page-queue.c), so no block is 8 mod 16.
const MI_MAX_ALIGN_SIZE: usize = 16;

/// Whether plain `mi_malloc` of `size` bytes satisfies `align`.
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= MI_MAX_ALIGN_SIZE && align <= size
}

/// A new block from `plain` when its blocks are aligned enough for
/// `layout`, else from `aligned` (a mimalloc entry point and its aligned
/// counterpart).
///
/// # Safety
/// `plain` and `aligned` must be such a pair: C functions taking a size
/// (and an alignment, a power of two) and returning a block or null.
#[inline(always)]
unsafe fn by_alignment(
    layout: Layout,
    plain_fn: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned_fn: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    // SAFETY: the caller's pair; Layout's alignment is a power of two.
    unsafe {
        if plain(layout.align(), layout.size()) {
            plain_fn(layout.size()).cast()
        } else {
            aligned_fn(layout.size(), layout.align()).cast()
        }
    }
}

// SAFETY: every pointer handed out comes from mimalloc and goes back to it
// (mi_free and mi_realloc take either kind); the alignment is checked above.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's malloc pair.
        unsafe { by_alignment(layout, mi::mi_malloc, mi::mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's zalloc pair.
        unsafe { by_alignment(layout, mi::mi_zalloc, mi::mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: ptr came from this allocator.
        unsafe { mi::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: ptr came from this allocator; a plain realloc keeps the
        // block or moves it to a new block, 16-aligned like every block.
        unsafe {
            if plain(layout.align(), new_size) {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every size and alignment a Rust program asks for comes back aligned,
    /// through the plain and the aligned entry points alike, and a block
    /// keeps its bytes and its alignment when it grows or shrinks.
    #[test]
    fn the_allocator_honours_every_alignment() {
        use std::alloc::{GlobalAlloc, Layout};
        let a = super::MiMalloc;
        let sizes = (1..=300).chain([1000, 1024, 1336, 4000, 4096, 8192, 16_384, 70_000]);
        for size in sizes {
            for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: sizes are non-zero, every block is written within
                // its size and freed once with the layout it has then.
                unsafe {
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed {size} align {align}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                    a.dealloc(z, layout);
                    for new in [size / 2 + 1, size * 3 + 17] {
                        let p = a.alloc(layout);
                        assert_eq!(p as usize % align, 0, "alloc {size} align {align}");
                        p.write_bytes(0xa5, size);
                        let q = a.realloc(p, layout, new);
                        assert_eq!(q as usize % align, 0, "realloc {size}->{new} align {align}");
                        let kept = std::slice::from_raw_parts(q, size.min(new));
                        assert!(
                            kept.iter().all(|b| *b == 0xa5),
                            "realloc {size}->{new} kept"
                        );
                        a.dealloc(q, Layout::from_size_align(new, align).unwrap());
                    }
                }
            }
        }
    }
}
