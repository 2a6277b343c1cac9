//! The capture maps of an instance, opened from its pins (`lb capture`).

use std::path::Path;

use aya::maps::{Array, MapData, PerCpuArray};
use lb_common::{maps, CaptureCtl, CaptureState};

use super::error::{map_err, open_pinned, DataplaneError, Result};

pub struct CaptureMaps {
    ctl: Array<MapData, CaptureCtl>,
    state: PerCpuArray<MapData, CaptureState>,
    perf: aya::maps::PerfEventArray<MapData>,
}

/// A CPU's perf buffer of captured packets.
pub type CaptureBuffer = aya::maps::perf::PerfEventArrayBuffer<MapData>;

impl CaptureMaps {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        use aya::maps::Map;
        Ok(Self {
            ctl: open_pinned(pin_dir, maps::CAPTURE_CTL, Map::Array)?,
            state: open_pinned(pin_dir, maps::CAPTURE_STATE, Map::PerCpuArray)?,
            perf: open_pinned(pin_dir, maps::CAPTURE, Map::PerfEventArray)?,
        })
    }

    pub fn ctl(&self) -> Result<CaptureCtl> {
        self.ctl.get(&0, 0).map_err(map_err(maps::CAPTURE_CTL))
    }

    pub fn set_ctl(&mut self, ctl: &CaptureCtl) -> Result<()> {
        self.ctl.set(0, ctl, 0).map_err(map_err(maps::CAPTURE_CTL))
    }

    /// (sent, suppressed) summed over the CPUs.
    pub fn totals(&self) -> Result<(u64, u64)> {
        let per_cpu = self.state.get(&0, 0).map_err(map_err(maps::CAPTURE_STATE))?;
        Ok(per_cpu.iter().fold((0, 0), |(sent, suppressed), s| (sent + s.sent, suppressed + s.suppressed)))
    }

    /// Opens a perf buffer of `pages` pages for each online CPU (the program writes to its
    /// CPU's). Closing them takes them out of the map again.
    pub fn open_buffers(&mut self, pages: usize) -> Result<Vec<CaptureBuffer>> {
        let cpus = aya::util::online_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
        cpus.into_iter().map(|cpu| self.perf.open(cpu, Some(pages)).map_err(DataplaneError::PerfBuffer)).collect()
    }
}
