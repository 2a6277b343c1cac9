//! What a subprogram returns: one scalar.
//!
//! The balancer's subprograms (`#[inline(never)]`, for their own stack frames) must return a
//! value in r0. A `Result` is returned through memory when LLVM chooses, and then r0 may still
//! hold a stack pointer at the exit, which the verifier refuses ("cannot return stack pointer to
//! the caller") depending on how registers happened to be allocated. A `Step` is a `u32`, so it
//! always travels in r0.

use lb_common::stats::Counter;

#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct Step(u32);

/// Set in a `Step` that carries a `Counter` (a pass or drop reason) rather than a value.
const REASON: u32 = 1 << 31;

impl Step {
    /// Packs `result`; `Ok` values must stay below `1 << 31` (verdicts and small enums do).
    #[inline(always)]
    pub fn of(result: Result<u32, Counter>) -> Self {
        match result {
            Ok(value) => Step(value),
            Err(reason) => Step(REASON | reason as u32),
        }
    }

    #[inline(always)]
    pub fn get(self) -> Result<u32, Counter> {
        if self.0 & REASON == 0 {
            return Ok(self.0);
        }
        // SAFETY: a `Step` with `REASON` set is only made by `of` from a `Counter` (`#[repr(u32)]`),
        // so the low bits are that counter's discriminant.
        Err(unsafe { core::mem::transmute::<u32, Counter>(self.0 & !REASON) })
    }
}
