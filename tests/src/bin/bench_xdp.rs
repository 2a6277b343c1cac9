//! `cargo xtask bench-xdp`: ns per packet of the balancer in the kernel (BPF_PROG_TEST_RUN with
//! a large repeat count), beside an empty XDP program (the floor).
//!
//! BPF_PROG_TEST_RUN does not restore the frame between repeats, so encapsulating cases run the
//! bench wrapper `lb_xdp_bench`, which undoes the encapsulation after each run (its cost, with
//! the prepend it undoes, is the `wrapper undo` row). Every row checks from the program's own
//! counters that all repeats took the path the row names.

use std::time::Instant;

use anyhow::{ensure, Result};
use lb_common::{bench, programs, stats::Counter, VipStats};
use lb_tests::{
    fixture::{Balancer, TEST_RING_SIZE},
    packet::Frame,
};
use lb_userspace::{dataplane::LoadOptions, test_run};

const RUNS: usize = 7;
const REPEAT: u32 = 1_000_000;
/// New-flow rows insert this many flows per run; the table holds all runs' flows.
const NEW_FLOW_REPEAT: u32 = 200_000;
const CONN_TABLE: u32 = 4 * 1024 * 1024;

struct Row {
    case: &'static str,
    timing: Timing,
}

/// Medians over the runs: the kernel's ns per repeat (time spent rescheduled excluded; whole
/// nanoseconds) and wall-clock ns per repeat around the syscall (includes preemption).
#[derive(Clone, Copy)]
struct Timing {
    kernel: f64,
    wall: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median ns per packet over `RUNS` runs of `repeat` repeats; `check` sees each run's repeat.
fn measure(fd: i32, frame: &[u8], repeat: u32, check: impl FnMut(u32) -> Result<()>) -> Result<Timing> {
    measure_each(fd, |_| frame.to_vec(), repeat, check)
}

/// `measure` with a frame per run (each BPF_PROG_TEST_RUN call starts from its input again).
fn measure_each(fd: i32, frame: impl Fn(usize) -> Vec<u8>, repeat: u32, mut check: impl FnMut(u32) -> Result<()>) -> Result<Timing> {
    let (mut kernel, mut wall) = (Vec::with_capacity(RUNS), Vec::with_capacity(RUNS));
    for run in 0..RUNS {
        let frame = frame(run);
        let start = Instant::now();
        let out = test_run::run(fd, &frame, repeat)?;
        let elapsed = start.elapsed();
        ensure!(out.action != 0, "program aborted");
        check(repeat)?;
        kernel.push(out.duration_ns as f64);
        wall.push(elapsed.as_nanos() as f64 / repeat as f64);
    }
    Ok(Timing { kernel: median(kernel), wall: median(wall) })
}

fn vip_delta(lb: &Balancer, index: u32, before: &mut VipStats) -> VipStats {
    let now = lb.dp.vip_stats(index).expect("vip stats");
    let delta = VipStats {
        packets: now.packets - before.packets,
        bytes: now.bytes - before.bytes,
        new_flows: now.new_flows - before.new_flows,
        conn_hits: now.conn_hits - before.conn_hits,
        conn_misses: now.conn_misses - before.conn_misses,
    };
    *before = now;
    delta
}

fn main() -> Result<()> {
    let jit = std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable").unwrap_or_default();
    println!("bpf_jit_enable = {}; {RUNS} runs per row, median; repeat {REPEAT} ({NEW_FLOW_REPEAT} for new flows)", jit.trim());

    let mut lb = Balancer::with_options(programs::BENCH_BALANCER, &LoadOptions { conn_table_size: CONN_TABLE });
    let vip4 = lb.add_vip("10.0.0.1", 80, 6, 0, lb_common::DEFAULT_RING_SIZE, &[("10.1.0.1", 1), ("10.1.0.2", 1), ("10.1.0.3", 1)]);
    let vip6 = lb.add_vip("2001:db8::10", 80, 6, 0, TEST_RING_SIZE, &[("fd00:1::1", 1), ("fd00:1::2", 1)]);
    let bench_fd = lb.dp.program_fd(programs::BENCH_BALANCER)?;
    let lb_fd = lb.dp.program_fd(programs::BALANCER)?;
    let floor_fd = lb.dp.program_fd(programs::PASS)?;
    let undo_fd = lb.dp.program_fd(programs::BENCH_UNDO)?;

    let tcp4 = Frame::tcp("192.0.2.1", 40_000, "10.0.0.1", 80).build();
    let tcp6 = Frame::tcp("2001:db8:c::1", 40_000, "2001:db8::10", 80).build();
    let other4 = Frame::tcp("192.0.2.1", 40_000, "10.0.0.99", 80).build();
    let other6 = Frame::tcp("2001:db8:c::1", 40_000, "2001:db8::99", 80).build();

    let mut rows = vec![
        Row { case: "empty XDP program (floor)", timing: measure(floor_fd, &tcp4, REPEAT, |_| Ok(()))? },
        Row { case: "wrapper undo (prepend + undo)", timing: measure(undo_fd, &tcp4, REPEAT, |_| Ok(()))? },
    ];

    for (case, frame) in [("non-VIP pass, IPv4", &other4), ("non-VIP pass, IPv6", &other6)] {
        let mut before = lb.dp.counter(Counter::Pass)?;
        let ns = measure(lb_fd, frame, REPEAT, |n| {
            let now = lb.dp.counter(Counter::Pass)?;
            ensure!(now - before == n as u64, "{case}: {} of {n} passed", now - before);
            before = now;
            Ok(())
        })?;
        rows.push(Row { case, timing: ns });
    }

    lb.dp.set_bench_mode(bench::SAME_FLOW)?;
    for (case, frame, vip) in [("conn-table hit, IPv4", &tcp4, &vip4), ("conn-table hit, IPv6", &tcp6, &vip6)] {
        test_run::run(lb_fd, frame, 1)?; // the first packet makes the entry
        let mut before = lb.dp.vip_stats(vip.meta.vip_index)?;
        let ns = measure(bench_fd, frame, REPEAT, |n| {
            let d = vip_delta(&lb, vip.meta.vip_index, &mut before);
            ensure!(d.conn_hits == n as u64 && d.packets == n as u64, "{case}: {d:?} for {n}");
            Ok(())
        })?;
        rows.push(Row { case, timing: ns });
    }

    lb.dp.set_bench_mode(bench::NEW_FLOW)?;
    // Each run starts at a source no earlier run reached; the wrapper bumps it per repeat.
    let fresh4 = |run: usize| {
        let base = std::net::Ipv4Addr::from(0x6440_0000 + (run as u32) * (1 << 18)); // 100.64.0.0/10
        Frame::tcp(&base.to_string(), 40_000, "10.0.0.1", 80).build()
    };
    let fresh6 = |run: usize| Frame::tcp(&format!("2001:db8:f:{run}::"), 40_000, "2001:db8::10", 80).build();
    type FrameForRun<'a> = &'a dyn Fn(usize) -> Vec<u8>;
    let new_flow_rows: [(&str, FrameForRun, _); 2] = [("new flow, IPv4", &fresh4, &vip4), ("new flow, IPv6", &fresh6, &vip6)];
    for (case, frame, vip) in new_flow_rows {
        let mut before = lb.dp.vip_stats(vip.meta.vip_index)?;
        let ns = measure_each(bench_fd, frame, NEW_FLOW_REPEAT, |n| {
            let d = vip_delta(&lb, vip.meta.vip_index, &mut before);
            ensure!(d.new_flows == n as u64 && d.conn_misses == n as u64, "{case}: {d:?} for {n}");
            Ok(())
        })?;
        rows.push(Row { case, timing: ns });
    }
    ensure!(lb.dp.counter(Counter::ConnInsertFailed)? == 0, "the connection table filled up");

    let floor = rows[0].timing;
    println!("\n| case | ns/packet (kernel) | x floor | ns/packet (wall) | x floor (wall) |");
    println!("|---|---:|---:|---:|---:|");
    for Row { case, timing: t } in &rows {
        println!("| {case} | {:.0} | {:.2} | {:.1} | {:.2} |", t.kernel, t.kernel / floor.kernel, t.wall, t.wall / floor.wall);
    }
    println!("\nTargets: conn-table hit <= 5x floor, non-VIP pass <= 2x, new flow <= 25x.");
    Ok(())
}
