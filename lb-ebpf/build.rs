//! Cargo does not know that linking this crate runs the `bpf-linker` binary. Rerun the build when
//! the binary found on PATH changes, so a new linker rebuilds the object. (A linker put earlier on
//! PATH without touching this one is not noticed; watching all of PATH would rebuild far too often.)
//!
//! It also asks bpf-linker for LLVM's generic expansion of memset / memcpy into plain stores. By
//! default bpf-linker has LLVM expand memcpy "in order" for JIT pattern matching, and then memset
//! is never expanded: zeroing even a 3-byte field becomes a call to a byte-loop subprogram, which
//! cost the packet path tens of nanoseconds.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(e) => println!("cargo:warning=bpf-linker not found ({e}); run `cargo xtask setup`"),
    }
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
