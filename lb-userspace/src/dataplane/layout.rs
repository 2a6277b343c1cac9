//! The layout of every pinned map, checked before a start reuses the pins of an earlier `lb`:
//! aya would reuse any pinned map of the same name, whatever it holds.
//!
//! A map's layout is its kind, key and value sizes, flags and (for most maps) entries, as the
//! kernel reports them, plus a version (`lb_common::maps::layout_version`) bumped when the
//! meaning of its bytes changes at the same sizes. The version is part of the pin's name
//! (`maps/NAME` for version 1, `maps/NAME_vN` after: bpffs refuses names with a dot), so an
//! older `lb`'s pin is never mistaken for a newer one. A pin of another layout is:
//! - recreated, for maps whose contents are counters or are written again from the config at
//!   every start (the counters restart at zero);
//! - refused, for the maps established flows depend on (the connection table, the VIPs, the
//!   reals, their generations and rings), with a message that says what to do.

use std::path::{Path, PathBuf};

use lb_common::maps;

use super::error::{map_err, DataplaneError, Result};

/// Maps whose contents established flows depend on: never recreated behind the operator's back.
const KEPT: &[&str] = &[maps::CONNS, maps::VIPS, maps::VIP_ADDRS, maps::VIP_GEN, maps::REALS, maps::MAGLEV];

/// Maps whose entries the options size (`LoadOptions`), checked by the loader itself.
const SIZED_BY_OPTIONS: &[&str] = &[maps::CONNS, maps::MAGLEV];

/// What the kernel reports of a map, and what this `lb`'s object declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    /// `None` where the options decide (CONNS, MAGLEV).
    pub max_entries: Option<u32>,
    pub flags: u32,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "type {} key {} B value {} B flags {:#x}", self.map_type, self.key_size, self.value_size, self.flags)?;
        match self.max_entries {
            Some(n) => write!(f, " entries {n}"),
            None => Ok(()),
        }
    }
}

/// What to do with a map's pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The pin has this layout: reuse it.
    Reuse,
    /// Unpin these (older layouts) and create the map anew.
    Recreate { pins: Vec<PathBuf>, why: String },
    /// Refuse to start.
    Refuse { why: String },
}

/// The pin of `name` at this `lb`'s layout version.
pub fn pin_path(maps_dir: &Path, name: &str) -> PathBuf {
    match maps::layout_version(name) {
        1 => maps_dir.join(name),
        v => maps_dir.join(format!("{name}_v{v}")),
    }
}

/// Pins of `name` under `maps_dir` and their versions (`NAME` is version 1).
fn pins_of(maps_dir: &Path, name: &str) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(maps_dir) else { return Vec::new() };
    let mut found: Vec<(u32, PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let file = e.file_name().into_string().ok()?;
            let version = match file.strip_prefix(name)? {
                "" => 1,
                rest => rest.strip_prefix("_v")?.parse().ok()?,
            };
            Some((version, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// Decides for map `name`, given the pins found (version, path, shape) and the layout wanted.
pub fn decide(name: &str, found: &[(u32, PathBuf, Shape)], wanted: (u32, Shape)) -> Verdict {
    let (version, shape) = wanted;
    let stale: Vec<&(u32, PathBuf, Shape)> = found.iter().filter(|(v, _, s)| *v != version || !same(s, &shape)).collect();
    if stale.is_empty() {
        return Verdict::Reuse;
    }
    let why = stale
        .iter()
        .map(|(v, path, s)| format!("{} has layout v{v} ({s}), this lb needs v{version} ({shape})", path.display()))
        .collect::<Vec<_>>()
        .join("; ");
    if KEPT.contains(&name) {
        return Verdict::Refuse {
            why: format!(
                "map {name}: {why}. Established flows depend on it and this lb cannot convert it: run the lb that pinned it, \
                 or drain the site and `lb stop --instance NAME` (which drops the flows) before starting this one"
            ),
        };
    }
    Verdict::Recreate { pins: stale.iter().map(|(_, p, _)| p.clone()).collect(), why }
}

/// Whether a pinned map's shape is the one wanted (entries only where they are compared).
fn same(pinned: &Shape, wanted: &Shape) -> bool {
    let entries = match wanted.max_entries {
        Some(n) => pinned.max_entries == Some(n),
        None => true,
    };
    entries && Shape { max_entries: None, ..*pinned } == Shape { max_entries: None, ..*wanted }
}

/// The layout each pinned map of `object` should have.
fn wanted_shapes(object: &[u8]) -> Result<Vec<(&'static str, Shape)>> {
    let parsed = aya_obj::Object::parse(object).map_err(|e| DataplaneError::Layout { why: format!("parsing the eBPF object: {e}") })?;
    maps::ALL
        .iter()
        .map(|&name| {
            let def = parsed.maps.get(name).ok_or(DataplaneError::NoMap { name })?;
            let max_entries = (!SIZED_BY_OPTIONS.contains(&name)).then(|| def.max_entries());
            let shape = Shape {
                map_type: def.map_type(),
                key_size: def.key_size(),
                value_size: def.value_size(),
                max_entries,
                flags: def.map_flags(),
            };
            Ok((name, shape))
        })
        .collect()
}

fn pinned_shape(name: &'static str, path: &Path) -> Result<Shape> {
    let info = aya::maps::MapInfo::from_pin(path).map_err(map_err(name))?;
    Ok(Shape {
        map_type: info.map_type().map_err(map_err(name))? as u32,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: Some(info.max_entries()),
        flags: info.map_flags(),
    })
}

/// Checks every pin under `maps_dir` against `object`'s maps before anything is loaded:
/// refuses (changing nothing) if a kept map has another layout, else unpins the maps to
/// recreate. Returns what was recreated and why, for the log.
pub fn prepare(maps_dir: &Path, object: &[u8]) -> Result<Vec<(&'static str, String)>> {
    let mut recreate = Vec::new();
    for (name, shape) in wanted_shapes(object)? {
        let found = pins_of(maps_dir, name)
            .into_iter()
            .map(|(v, path)| pinned_shape(name, &path).map(|s| (v, path, s)))
            .collect::<Result<Vec<_>>>()?;
        match decide(name, &found, (maps::layout_version(name), shape)) {
            Verdict::Reuse => {}
            Verdict::Refuse { why } => return Err(DataplaneError::Layout { why }),
            Verdict::Recreate { pins, why } => recreate.push((name, pins, why)),
        }
    }
    // Only once nothing is refused: the running program keeps its own maps until replaced.
    recreate
        .into_iter()
        .map(|(name, pins, why)| {
            for path in pins {
                std::fs::remove_file(&path).map_err(|source| DataplaneError::Pin { path, source })?;
            }
            Ok((name, why))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS_V1: Shape = Shape { map_type: 6, key_size: 4, value_size: 8, max_entries: Some(40), flags: 0 };

    fn found(name: &str, version: u32, shape: Shape) -> Vec<(u32, PathBuf, Shape)> {
        vec![(version, PathBuf::from(format!("/sys/fs/bpf/x/maps/{name}")), shape)]
    }

    #[test]
    fn counters_of_another_layout_are_recreated_and_kept_maps_refused() {
        let more = Shape { max_entries: Some(44), ..STATS_V1 };
        assert_eq!(decide(maps::STATS, &found(maps::STATS, 1, STATS_V1), (1, STATS_V1)), Verdict::Reuse);
        assert!(matches!(decide(maps::STATS, &found(maps::STATS, 1, STATS_V1), (1, more)), Verdict::Recreate { .. }));
        assert!(matches!(decide(maps::STATS, &found(maps::STATS, 1, STATS_V1), (2, STATS_V1)), Verdict::Recreate { .. }));
        let conns = Shape { map_type: 9, key_size: 40, value_size: 16, max_entries: None, flags: 0 };
        let pinned = Shape { value_size: 12, max_entries: Some(1024), ..conns };
        let Verdict::Refuse { why } = decide(maps::CONNS, &found(maps::CONNS, 1, pinned), (1, conns)) else { panic!("not refused") };
        assert!(why.contains("lb stop") && why.contains("value 12 B"), "{why}");
        // A newer version of a kept map at the same sizes is refused too.
        assert!(matches!(decide(maps::REALS, &found(maps::REALS, 1, STATS_V1), (2, STATS_V1)), Verdict::Refuse { .. }));
        // The connection table's entries are the options' business (checked by the loader).
        assert_eq!(decide(maps::CONNS, &found(maps::CONNS, 1, Shape { max_entries: Some(1024), ..conns }), (1, conns)), Verdict::Reuse);
    }

    #[test]
    fn pins_carry_their_version_in_the_name() {
        let dir = std::env::temp_dir().join(format!("lb-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["STATS", "STATS_v3", "STATS_OTHER", "VIPS"] {
            std::fs::write(dir.join(file), "").unwrap();
        }
        let versions: Vec<u32> = pins_of(&dir, "STATS").into_iter().map(|(v, _)| v).collect();
        assert_eq!(versions, [1, 3]);
        assert_eq!(pin_path(&dir, maps::STATS), dir.join("STATS"), "version 1 keeps the name earlier lbs used");
        // No dot: bpffs refuses to pin a name with one (EPERM).
        assert_eq!(pin_path(&dir, maps::SYN_SEEN), dir.join("SYN_SEEN_v2"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_object_declares_every_pinned_map() {
        let shapes = wanted_shapes(crate::LB_EBPF).unwrap();
        assert_eq!(shapes.len(), maps::ALL.len());
        let stats = shapes.iter().find(|(n, _)| *n == maps::STATS).unwrap().1;
        assert_eq!((stats.value_size, stats.max_entries), (8, Some(lb_common::stats::Counter::COUNT)));
    }
}
