//! What can go wrong with the data plane, and the small helpers every map access shares.

use std::path::{Path, PathBuf};

use aya::maps::MapData;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("program {name} is not in the eBPF object")]
    NoProgram { name: String },
    #[error("program {name}")]
    Program {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name} is not in the eBPF object")]
    NoMap { name: &'static str },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("pinning under {path} (is bpffs mounted at /sys/fs/bpf?)")]
    Pin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the connection table pinned at {path} holds {pinned} entries, the config asks for {wanted}: `lb stop` the instance first (this drops established flows: drain before)")]
    PinnedSizeMismatch { path: PathBuf, pinned: u32, wanted: u32 },
    #[error("pinned maps: {why}")]
    Layout { why: String },
    #[error("map {name} pinned with {pinned}-byte values, this lb reads {wanted}-byte values")]
    ValueSize { name: &'static str, pinned: u32, wanted: u32 },
    #[error("refusing the pin directory {path}: {why}. Nothing was loaded or attached; remove it (`rm -r {path}` as root, after checking what it holds) and start again")]
    UnsafePinDir { path: PathBuf, why: String },
    #[error("reading map {name} in one batch")]
    Batch {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("opening a perf buffer of the capture")]
    PerfBuffer(#[source] aya::maps::perf::PerfBufferError),
    #[error("reading the online CPUs")]
    Cpus(#[source] std::io::Error),
    #[error("link pinned at {path}")]
    Link { path: PathBuf, detail: String },
    #[error("a ring of {slots} slots at pool slot {base} does not fit the pool of {pool} slots")]
    RingOutOfRange { base: u32, slots: usize, pool: u32 },
}

/// Knobs fixed when the object is loaded.
pub(super) type Result<T, E = DataplaneError> = std::result::Result<T, E>;

pub(super) fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// A lookup's value, None for a key the map does not hold.
pub(super) fn found<V>(name: &'static str, got: Result<V, aya::maps::MapError>) -> Result<Option<V>> {
    match got {
        Ok(v) => Ok(Some(v)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(source) => Err(DataplaneError::Map { name, source }),
    }
}

/// Opens the map pinned as `name` under `pin_dir`, as `variant` says its kind is.
pub(super) fn open_pinned<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    pin_dir: &Path,
    name: &'static str,
    variant: fn(MapData) -> aya::maps::Map,
) -> Result<T> {
    let data = MapData::from_pin(super::pins::map(pin_dir, name)).map_err(map_err(name))?;
    T::try_from(variant(data)).map_err(map_err(name))
}
