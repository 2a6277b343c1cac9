//! `lb doctor`'s evidence gathered off the loop (`Sampled`): the data plane's counters over a
//! window, the connection table's fill, the config file as it is now, and the forwards of the
//! second chance's backends, asked over HTTP. Blocking: the API runs it on a blocking thread.

use super::doctor::{ConfigFile, DoctorInputs, Sampled};

/// Samples the data plane over `window` (blocking: run it off the loop) and compares the config
/// file with the one that runs.
pub fn sample(
    counters: &crate::dataplane::Counters,
    live: &std::sync::RwLock<crate::dataplane::LiveMaps>,
    window: std::time::Duration,
    inputs: &DoctorInputs,
) -> Result<Sampled, crate::dataplane::DataplaneError> {
    let (before, reals_before) = (counters.counters()?, counters.all_real_stats()?);
    let backends_before = backend_counters(&inputs.backends);
    std::thread::sleep(window);
    let (after, reals_after) = (counters.counters()?, counters.all_real_stats()?);
    let backends_after = backend_counters(&inputs.backends);
    let increase = after.iter().map(|(k, v)| (k.to_string(), v.saturating_sub(before.get(k).copied().unwrap_or(0)))).collect();
    let real_packets = reals_after
        .iter()
        .zip(&reals_before)
        .enumerate()
        .filter(|(_, (a, b))| a.packets > b.packets)
        .map(|(id, (a, b))| (id as u32, a.packets - b.packets))
        .collect();
    // The whole table's keys.
    let conn_entries = live.read().unwrap_or_else(|p| p.into_inner()).conn_entries();
    let backends_unread = backends_after
        .iter()
        .filter(|(a, after)| after.is_none() || backends_before.iter().any(|(b, v)| b == a && v.is_none()))
        .map(|(a, _)| *a)
        .collect();
    let backend_forwards = backends_after
        .into_iter()
        .filter_map(|(addr, after)| {
            let before = backends_before.iter().find(|(a, _)| *a == addr)?.1?;
            let after = after?;
            Some((addr.ip(), after.0.saturating_sub(before.0), after.1.saturating_sub(before.1)))
        })
        .collect();
    let config_file = match crate::config::load_raw(&inputs.config_path) {
        Ok(raw) if raw == *inputs.running => ConfigFile::AsRunning,
        Ok(_) => ConfigFile::Changed,
        Err(e) => ConfigFile::Unreadable(format!("{e:#}")),
    };
    Ok(Sampled {
        counters: after.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        increase,
        real_packets,
        conn_entries,
        config_file,
        backend_forwards,
        backends_unread,
    })
}

/// Each backend endpoint's (taken, forwarded) tunnelled packets, from its /metrics, asked all at
/// once with a second each (None: no answer).
fn backend_counters(endpoints: &[std::net::SocketAddr]) -> Vec<(std::net::SocketAddr, Option<(u64, u64)>)> {
    use crate::http::{request_blocking, Call, Endpoint};
    let ask = |addr: std::net::SocketAddr| {
        let call = Call { limit: std::time::Duration::from_secs(1), max_body: 1 << 20, ..Call::new("GET", "/metrics") };
        let body = request_blocking(&Endpoint::Tcp(addr), call).ok().filter(|r| r.status == 200)?.body;
        let count = |what: &str| {
            let series = format!("lb_backend_packets_total{{what=\"{what}\"}} ");
            body.lines().find_map(|l| l.strip_prefix(series.as_str())?.trim().parse::<u64>().ok())
        };
        let forwarded = count("second_chance_forwarded")?;
        Some((count("decapsulated")? + forwarded, forwarded))
    };
    std::thread::scope(|s| {
        let asked: Vec<_> = endpoints.iter().map(|&a| (a, s.spawn(move || ask(a)))).collect();
        asked.into_iter().map(|(a, h)| (a, h.join().ok().flatten())).collect()
    })
}
