//! Cargo does not know that linking this crate runs the `bpf-linker` binary. Rerun the build when
//! the binary found on PATH changes, so a new linker rebuilds the object. (A linker put earlier on
//! PATH without touching this one is not noticed; watching all of PATH would rebuild far too often.)
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(e) => println!("cargo:warning=bpf-linker not found ({e}); run `cargo xtask setup`"),
    }
}
