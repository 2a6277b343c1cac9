//! BPF_PROG_TEST_RUN: runs a loaded XDP program on a frame we supply, in the kernel (JIT
//! included), and returns the verdict, the frame as the program left it, and the time per run.
//! aya 0.14 has no wrapper for it; the syscall is a few lines around the program fd.

use std::io;

/// `union bpf_attr`'s `test` member (include/uapi/linux/bpf.h). The kernel accepts a prefix of
/// the union and zero-fills the rest.
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// Room for what a program prepends (at most one IPv6 header here) and then some.
const OUT_HEADROOM: usize = 256;

#[derive(Debug)]
pub struct TestRun {
    /// The XDP verdict.
    pub action: u32,
    /// The frame as the program left it.
    pub data: Vec<u8>,
    /// Mean nanoseconds per run, as the kernel measured it.
    pub duration_ns: u32,
}

/// Runs program `prog_fd` `repeat` times (at least once) on `frame`.
pub fn run(prog_fd: i32, frame: &[u8], repeat: u32) -> io::Result<TestRun> {
    let mut out = vec![0u8; frame.len() + OUT_HEADROOM];
    let mut attr = TestAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestAttr::default()
    };
    // SAFETY: attr points at valid buffers of the sizes given, alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &mut attr as *mut TestAttr, std::mem::size_of::<TestAttr>() as u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok(TestRun { action: attr.retval, data: out, duration_ns: attr.duration })
}

/// XDP verdicts by name, for readable assertions.
pub fn action_name(action: u32) -> &'static str {
    match action {
        0 => "XDP_ABORTED",
        1 => "XDP_DROP",
        2 => "XDP_PASS",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "XDP_UNKNOWN",
    }
}
