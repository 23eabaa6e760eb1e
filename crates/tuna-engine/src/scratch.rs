//! Reused per-thread scratch buffers, so kernels called once per layer do not allocate each time.
//!
//! Each thread keeps a small pool. A buffer is taken out of the pool while in use (not borrowed),
//! so nested use (the LM head packing bf16 operands inside its own scratch, or a rayon task stolen
//! while a product waits) just takes another buffer instead of failing.

use std::cell::RefCell;

/// Buffers kept per thread and element type; more nested uses than this allocate.
const POOL: usize = 4;

thread_local! {
    static F32: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    static U16: RefCell<Vec<Vec<u16>>> = const { RefCell::new(Vec::new()) };
}

fn with_pool<T: Copy + Default, R>(
    pool: &'static std::thread::LocalKey<RefCell<Vec<Vec<T>>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let mut buf = pool.with(|p| p.borrow_mut().pop()).unwrap_or_default();
    if buf.len() < len {
        buf.resize(len, T::default());
    }
    let r = f(&mut buf[..len]);
    pool.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL {
            p.push(buf);
        }
    });
    r
}

/// Runs `f` with an f32 scratch buffer of `len` elements (contents unspecified).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_pool(&F32, len, f)
}

/// Runs `f` with a u16 scratch buffer (bf16 bits) of `len` elements (contents unspecified).
pub(crate) fn with_scratch_u16<R>(len: usize, f: impl FnOnce(&mut [u16]) -> R) -> R {
    with_pool(&U16, len, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_use_gets_distinct_buffers_that_are_reused() {
        let (outer, inner) = with_scratch(8, |a| {
            a.fill(1.0);
            let inner = with_scratch(8, |b| {
                b.fill(2.0);
                b.as_ptr() as usize
            });
            assert!(
                a.iter().all(|&x| x == 1.0),
                "inner use clobbered the outer buffer"
            );
            (a.as_ptr() as usize, inner)
        });
        assert_ne!(outer, inner);
        // Both went back to the pool: the next use reuses one of them.
        let again = with_scratch(4, |c| c.as_ptr() as usize);
        assert!(again == outer || again == inner);
    }
}
