//! Thousands of VIPs through the real `lb` and BIRD (see `lb_tests::scale`): 4,096 VIPs of 16
//! reals each (ring size 16,381) are programmed, announced and routed; the pool holds every ring
//! where the VIPs say; a reload that changes one real rebuilds that VIP's ring only; a metrics
//! scrape and `lb status` cover every VIP and real. Times are printed (`cargo xtask
//! bench-control` has them as figures); the test asserts what was done, not how fast.

use std::time::Instant;

use aya::maps::{Array, HashMap, Map, MapData};
use lb_common::{maps, SlotPair, VipKey, VipMeta};
use lb_tests::{
    lbd::metric,
    require_root,
    scale::{vip_sections, ScaleSite},
};

const VIPS: usize = 4096;
const REALS: usize = 16;
const RING: u32 = 16_381;

#[test]
fn four_thousand_and_ninety_six_vips_are_programmed_announced_and_reloaded_one_ring_at_a_time() {
    require_root!();
    let _serial = lb_tests::serial();
    let site = ScaleSite::new();
    let (d, startup) = site.start(&vip_sections(VIPS, REALS, RING, 1), VIPS);
    println!(
        "{VIPS} VIPs x {REALS} reals (ring {RING}): programmed in {:.2?}, all announced {:.2?}, all routed at the router {:.2?}",
        startup.programmed, startup.announced, startup.routed
    );

    let status = d.status();
    assert_eq!(status.len(), VIPS);
    let mut ids = std::collections::HashSet::new();
    for v in &status {
        assert!(v.announced && v.reals.len() == REALS && v.reals.iter().all(|r| r.up), "{v:?}");
        assert_eq!(v.reals.iter().map(|r| r.slots).sum::<u32>(), RING, "{}: every slot has a real", v.name);
        ids.extend(v.reals.iter().map(|r| r.id));
    }
    assert_eq!(ids.len(), VIPS * REALS, "a real id per real of each VIP");

    // The data plane: each VIP's live ring, where its VipMeta says, holds that VIP's reals only.
    let pins = lb_userspace::dataplane::pins::balancer(&d.instance).join("maps");
    let vips: HashMap<_, VipKey, VipMeta> = HashMap::try_from(Map::HashMap(MapData::from_pin(pins.join(maps::VIPS)).unwrap())).unwrap();
    let maglev: Array<_, SlotPair> = Array::try_from(Map::Array(MapData::from_pin(pins.join(maps::MAGLEV)).unwrap())).unwrap();
    let metas: Vec<VipMeta> = vips.iter().map(|kv| kv.unwrap().1).collect();
    assert_eq!(metas.len(), VIPS);
    let mut ring_ranges: Vec<(u32, u32)> = metas.iter().map(|m| (m.ring_base, m.ring_base + m.ring_size)).collect();
    ring_ranges.sort();
    assert!(ring_ranges.windows(2).all(|w| w[0].1 <= w[1].0), "live rings do not overlap");
    println!("ring pool: {} slots; live rings end at slot {}", maglev.len() * 2, ring_ranges.last().unwrap().1);
    for meta in metas.iter().filter(|m| [0, VIPS as u32 / 2, VIPS as u32 - 1].contains(&m.vip_index)) {
        let own: Vec<u32> = status.iter().find(|v| v.index == meta.vip_index).unwrap().reals.iter().map(|r| r.id).collect();
        for slot in (meta.ring_base..meta.ring_base + meta.ring_size).step_by(97) {
            let id = maglev.get(&(slot / 2), 0).unwrap()[(slot % 2) as usize];
            assert!(own.contains(&id), "VIP index {}: slot {slot} holds real {id}, not one of {own:?}", meta.vip_index);
        }
    }

    // A reload that changes one real of one VIP: one ring rebuilt.
    let rebuilds = metric(&d.metrics(), "lb_ring_rebuilds_total");
    std::fs::write(&d.config, format!("instance = \"{}\"\n{}", d.instance, site.config(&vip_sections(VIPS, REALS, RING, 3)))).unwrap();
    let started = Instant::now();
    let out = d.cli(&["reload"]);
    let reload = started.elapsed();
    assert!(out.status.success(), "reload: {}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    let text = d.metrics();
    assert_eq!(metric(&text, "lb_ring_rebuilds_total"), rebuilds + 1.0, "only the changed VIP's ring was rebuilt");
    assert_eq!(d.status()[0].reals[0].config_weight, 3);

    // Scrape and status: complete at this size.
    let started = Instant::now();
    let text = d.metrics();
    let scrape = started.elapsed();
    assert_eq!(text.lines().filter(|l| l.starts_with("lb_real_up{")).count(), VIPS * REALS);
    assert_eq!(text.lines().filter(|l| l.starts_with("lb_vip_packets_total{")).count(), VIPS);
    let started = Instant::now();
    let status = d.status();
    let status_took = started.elapsed();
    assert_eq!(status.iter().map(|v| v.reals.len()).sum::<usize>(), VIPS * REALS);
    println!("reload of one changed real: {reload:.2?} (lb reload, CLI included); /metrics scrape: {scrape:.2?} ({} bytes); lb status --json: {status_took:.2?} (CLI included)", text.len());
}
