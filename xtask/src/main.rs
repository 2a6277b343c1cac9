//! Developer tasks: `cargo xtask setup | build-ebpf | lint | test | bench-xdp | bench-conns | bench-control | bench-e2e | bench-fleet | demo | dist`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Opt {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what builds and tests need (idempotent): bpffs, Debian packages, rust-src for the
    /// nightly toolchain, bpf-linker built against that toolchain's LLVM.
    Setup,
    /// Build the eBPF object (the same build `lb-userspace` runs to embed it).
    BuildEbpf,
    /// Formatting and clippy (warnings are errors): the host crates, and the eBPF crate with
    /// the nightly toolchain for its target.
    Lint,
    /// Run every test, privileged ones included (they fail rather than skip here).
    Test {
        /// Passed on to `cargo test`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// ns per packet of each balancer path in the kernel, beside an empty program.
    BenchXdp,
    /// Connection-table layouts (shared LRU, per-CPU LRU lists) with one and two CPUs at once.
    BenchConns,
    /// Maglev rebuild time and backend-failure-to-ring-switch time of the daemon.
    BenchControl,
    /// A fleet revision's time to reach 200 simulated nodes (64 and 4,096 VIPs), and the store's
    /// size (needs etcd: `cargo xtask setup`).
    BenchFleet,
    /// Packets/s and requests/s through one site, backend and site failover times.
    BenchE2e,
    /// Two anycast sites with BIRD and `lb`: traffic, a backend failure, a site failure.
    Demo,
    /// The release `lb` with its man page and shell completions, in target/dist/.
    Dist,
}

fn main() -> Result<()> {
    match Opt::parse().task {
        Task::Setup => setup(),
        Task::BuildEbpf => build_ebpf(),
        Task::Test { args } => test(&args),
        Task::Lint => lint(),
        Task::BenchXdp => cargo_run_root("bench_xdp"),
        Task::BenchConns => cargo_run_root("bench_conns"),
        Task::BenchControl => cargo_run_with_lb("bench_control"),
        Task::Demo => cargo_run_with_lb("demo"),
        Task::Dist => dist(),
        Task::BenchE2e => cargo_run_with_lb("bench_e2e"),
        Task::BenchFleet => {
            run(Command::new("cargo").args(["run", "--quiet", "--release", "--package", "lb-tests", "--bin", "bench_fleet"]))
        }
    }
}

/// Runs a command, failing with its name when it does not succeed.
fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(command: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {command}")]).output().is_ok_and(|o| o.status.success())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|u| u.trim() == "0")
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf ")))
}

/// Debian packages by a command each provides.
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("bird", "bird2"),
    ("tcpdump", "tcpdump"),
    ("setpriv", "util-linux"),
    ("prlimit", "util-linux"),
    ("strace", "strace"),
    ("capsh", "libcap2-bin"),
    ("systemd-analyze", "systemd"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    // The etcd client's gRPC code is generated at build time; the fleet tests run etcd.
    ("protoc", "protobuf-compiler"),
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    // The fleet tests make the TLS cluster's CA and certificates.
    ("openssl", "openssl"),
    // The GeoDNS test runs a real gdnsd and asks it with dig.
    ("gdnsd", "gdnsd"),
    ("dig", "bind9-dnsutils"),
];

/// The GeoLite2 City database the GeoDNS test places clients with: PyPI's
/// maxminddb-geolite2 ships one (tests/src/geodns.rs reads it here).
const GEOLITE2_CITY: &str = "/var/cache/anycast-lb/GeoLite2-City.mmdb";
const GEOLITE2_PACKAGE: &str = "maxminddb-geolite2-2018.703";

fn setup() -> Result<()> {
    ensure!(is_root(), "setup installs packages and mounts bpffs: run it as root");
    if !bpffs_mounted() {
        println!("setup: mounting bpffs on /sys/fs/bpf");
        std::fs::create_dir_all("/sys/fs/bpf")?;
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    let missing: Vec<&str> = PACKAGES.iter().filter(|(cmd, _)| !have(cmd)).map(|(_, pkg)| *pkg).collect();
    if !missing.is_empty() {
        println!("setup: installing {}", missing.join(" "));
        run(Command::new("apt-get").arg("update").arg("-qq"))?;
        run(Command::new("apt-get").args(["install", "-y", "-qq"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("setup: installing the nightly toolchain");
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    run(Command::new("rustup").args(["component", "add", "rust-src", "clippy", "--toolchain", "nightly"]))?;
    run(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))?;
    install_bpf_linker()?;
    install_geolite2()?;
    println!("setup: done");
    Ok(())
}

/// The GeoLite2 City database, from its PyPI package's source archive.
fn install_geolite2() -> Result<()> {
    let db = Path::new(GEOLITE2_CITY);
    if db.exists() {
        println!("setup: {GEOLITE2_CITY} present");
        return Ok(());
    }
    let dir = db.parent().expect("an absolute path");
    let download = dir.join("pip");
    std::fs::create_dir_all(&download)?;
    let (name, version) = GEOLITE2_PACKAGE.rsplit_once('-').expect("name-version");
    println!("setup: fetching the GeoLite2 City database ({name} {version} from PyPI)");
    run(Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check", "-d"])
        .arg(&download)
        .arg(format!("{name}=={version}")))?;
    let archive = download.join(format!("{GEOLITE2_PACKAGE}.tar.gz"));
    let member = format!("{GEOLITE2_PACKAGE}/_maxminddb_geolite2/GeoLite2-City.mmdb");
    run(Command::new("tar").arg("-xzf").arg(&archive).arg("-C").arg(dir).args(["--strip-components=2", &member]))?;
    ensure!(db.exists(), "{} did not hold {member}", archive.display());
    Ok(())
}

/// bpf-linker, built against the nightly toolchain's own libLLVM: its build only needs a prefix
/// with `bin/llvm-config` (any executable) and `lib/` holding `libLLVM.so` and the versioned
/// name, both linked to the toolchain's library. The binary finds the library through its rpath,
/// so the prefix lives in CARGO_HOME, not in a temporary folder.
fn install_bpf_linker() -> Result<()> {
    let sysroot = PathBuf::from(output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim());
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let llvm_major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("nightly rustc reports no LLVM version")?
        .to_owned();
    let lib_dir = sysroot.join("lib");
    let lib_name = std::fs::read_dir(&lib_dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib_dir.display()))?;

    if output(Command::new("bpf-linker").arg("--version")).is_ok_and(|v| v.contains("0.13")) {
        println!("setup: bpf-linker present");
        return Ok(());
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let prefix = cargo_home.join("anycast-lb").join(format!("llvm-{lib_name}"));
    std::fs::create_dir_all(prefix.join("bin"))?;
    std::fs::create_dir_all(prefix.join("lib"))?;
    let config = prefix.join("bin/llvm-config");
    std::fs::write(&config, "#!/bin/sh\nexit 0\n")?;
    run(Command::new("chmod").arg("755").arg(&config))?;
    for link in ["libLLVM.so", lib_name.as_str()] {
        let path = prefix.join("lib").join(link);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(lib_dir.join(&lib_name), &path)?;
    }
    println!("setup: building bpf-linker 0.13 against {lib_name} (a few minutes)");
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--version", "^0.13", "--no-default-features", "--features"])
        .arg(format!("llvm-{llvm_major}"))
        .env("LLVM_PREFIX", &prefix))
}

fn build_ebpf() -> Result<()> {
    run(Command::new("cargo").args(["build", "--package", "lb-userspace"]))?;
    let out = Path::new("target/debug/build");
    let newest = std::fs::read_dir(out)?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("out/lb-ebpf"))
        .filter(|p| p.exists())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
    match newest {
        Some(p) => println!("eBPF object: {}", p.display()),
        None => bail!("built, but found no lb-ebpf object under {}", out.display()),
    }
    Ok(())
}

/// Privileged tests need root, bpffs and the namespace tools; say which is missing.
fn check_privileged_prerequisites() -> Result<()> {
    ensure!(is_root(), "privileged tests (BPF_PROG_TEST_RUN, XDP, network namespaces) need root");
    ensure!(bpffs_mounted(), "bpffs is not mounted on /sys/fs/bpf: run `cargo xtask setup`");
    for (cmd, pkg) in PACKAGES {
        ensure!(have(cmd), "`{cmd}` is missing (Debian package {pkg}): run `cargo xtask setup`");
    }
    Ok(())
}

fn lint() -> Result<()> {
    run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    run(Command::new("cargo").args(["clippy", "--workspace", "--exclude", "lb-ebpf", "--all-targets", "--", "-D", "warnings"]))?;
    run(Command::new("cargo")
        .args(["+nightly", "clippy", "--target", "bpfel-unknown-none", "-Z", "build-std=core", "--", "-D", "warnings"])
        .current_dir("lb-ebpf"))?;
    verify_unit()
}

/// `systemd-analyze verify` on the units in deploy/, failing on anything it prints (it exits 0
/// on an unknown key). A unit's `lb` path is swapped for a binary that exists here.
fn verify_unit() -> Result<()> {
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("lb-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for name in ["anycast-lb.service", "anycast-lb-backend.service"] {
        let unit = std::fs::read_to_string(Path::new("deploy").join(name)).with_context(|| format!("reading deploy/{name}"))?;
        let copy = dir.join(name);
        std::fs::write(&copy, unit.replace("/usr/local/bin/lb", exe.to_str().context("utf-8 path")?))?;
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .context("running systemd-analyze (Debian package systemd)")?;
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        ensure!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify deploy/{name}:\n{said}");
        println!("systemd-analyze verify deploy/{name}: no findings");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Runs `cargo test` (privileged tests required) and closes with one total line,
/// `N passed, N failed`, summed over cargo's per-binary results.
fn test(args: &[String]) -> Result<()> {
    check_privileged_prerequisites()?;
    // The daemon tests run the real `lb` binary, built as it ships: a debug build takes over
    // 20 s to program the scale test's 4,096 VIPs (2.8 s in release).
    run(Command::new("cargo").args(["build", "--release", "--package", "lb-userspace", "--bin", "lb"]))?;
    let lb = std::fs::canonicalize("target/release/lb").context("the release `lb` binary")?;
    let mut child = Command::new("cargo")
        .arg("test")
        .args(args)
        .env("LB_REQUIRE_PRIVILEGED", "1")
        .env("LB_BIN", &lb)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                result.split(';').find_map(|part| {
                    part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(word)?.trim().parse::<u64>().ok()
                })
            };
            passed += count("passed").unwrap_or(0);
            failed += count("failed").unwrap_or(0);
        }
    }
    let status = child.wait()?;
    println!("{passed} passed, {failed} failed");
    ensure!(status.success() && failed == 0, "cargo test failed: {status}");
    ensure!(passed > 0, "cargo test ran no test");
    Ok(())
}

/// Runs a harness binary that starts the real `lb` daemon (built first, same profile).
/// Builds the release `lb` and writes, beside a copy of it in target/dist/: its man pages in
/// man/ (checked by rendering them with `man`) and completion scripts for bash, zsh and fish.
fn dist() -> Result<()> {
    run(Command::new("cargo").args(["build", "--quiet", "--release", "--package", "lb-userspace", "--bin", "lb"]))?;
    let dist = Path::new("target/dist");
    let (man, completions) = (dist.join("man"), dist.join("completions"));
    std::fs::create_dir_all(&completions)?;
    let lb = dist.join("lb");
    std::fs::copy("target/release/lb", &lb).context("copying target/release/lb")?;
    run(Command::new(&lb).arg("man").arg(&man))?;
    for (shell, file) in [("bash", "lb.bash"), ("zsh", "_lb"), ("fish", "lb.fish")] {
        let text = output(Command::new(&lb).args(["completions", shell]))?;
        ensure!(text.contains("flows"), "`lb completions {shell}` does not complete the subcommands");
        std::fs::write(completions.join(file), text)?;
    }
    let render = |page: &str| output(Command::new("man").arg("-l").arg(man.join(page)).env("MANPAGER", "cat").env("MANWIDTH", "100"));
    if have("man") {
        ensure!(render("lb.1")?.contains("lb-flows(1)"), "lb.1 renders without its subcommands");
        ensure!(render("lb-flow.1")?.contains("--json"), "lb-flow.1 renders without its options");
    }
    let pages = std::fs::read_dir(&man)?.count();
    println!("{}: lb, {pages} man pages in man/, completions for bash, zsh and fish in completions/", dist.display());
    Ok(())
}

fn cargo_run_with_lb(bin: &str) -> Result<()> {
    run(Command::new("cargo").args(["build", "--quiet", "--release", "--package", "lb-userspace", "--bin", "lb"]))?;
    cargo_run_root(bin)
}

fn cargo_run_root(bin: &str) -> Result<()> {
    check_privileged_prerequisites()?;
    run(Command::new("cargo").args(["run", "--quiet", "--release", "--package", "lb-tests", "--bin", bin]))
}
