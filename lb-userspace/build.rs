//! Builds the eBPF object (lb-ebpf) with the nightly toolchain and bpf-linker, into OUT_DIR,
//! so `LB_EBPF` can embed it. `cargo xtask build-ebpf` runs this same build.
use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("MetadataCommand::exec")?;
    let ebpf = metadata.packages.into_iter().find(|p| p.name.as_str() == "lb-ebpf").ok_or_else(|| anyhow!("lb-ebpf package not found"))?;
    let root_dir = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("no parent dir"))?;
    let package = Package { name: ebpf.name.as_str(), root_dir: root_dir.as_str(), ..Default::default() };
    aya_build::build_ebpf([package], Toolchain::Nightly)
}
