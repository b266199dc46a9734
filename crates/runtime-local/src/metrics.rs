//! What the machine (or the container the agent runs in) uses: CPU and memory from the
//! process's cgroup (v1 or v2) where there is one, else from `/proc`; disk from `statvfs("/")`.

use std::ffi::CString;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use sandkit_core::Metrics;

/// The previous CPU sample, so that a reading is the use since the last one.
#[derive(Debug, Default)]
pub(crate) struct CpuSampler {
    last: Mutex<Option<(Instant, u64)>>,
}

/// How long the first reading samples for.
const FIRST_SAMPLE: Duration = Duration::from_millis(100);

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The directory of this process's cgroup for a v1 `controller`, or the v2 unified one.
fn cgroup_dir(controller: &str) -> Option<String> {
    let own = read("/proc/self/cgroup")?;
    let path = |line: &str| line.splitn(3, ':').nth(2).map(str::to_string);
    for line in own.lines() {
        let fields: Vec<&str> = line.splitn(3, ':').collect();
        if fields.len() == 3 && fields[1].split(',').any(|c| c == controller) {
            let p = path(line)?;
            for dir in [
                format!("/sys/fs/cgroup/{controller}{p}"),
                format!("/sys/fs/cgroup/{controller}"),
            ] {
                if std::path::Path::new(&dir).is_dir() {
                    return Some(dir);
                }
            }
        }
    }
    // cgroup v2: one hierarchy.
    let p = own.lines().find(|l| l.starts_with("0::")).and_then(path)?;
    [format!("/sys/fs/cgroup{p}"), "/sys/fs/cgroup".to_string()]
        .into_iter()
        .find(|d| std::path::Path::new(&format!("{d}/cgroup.controllers")).exists())
}

fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// CPU time used so far, in nanoseconds.
fn cpu_used_ns() -> Option<u64> {
    if let Some(d) = cgroup_dir("cpuacct") {
        if let Some(v) = read(&format!("{d}/cpuacct.usage")) {
            return v.trim().parse().ok();
        }
    }
    if let Some(d) = cgroup_dir("cpu") {
        if let Some(v) = read(&format!("{d}/cpu.stat")) {
            return stat_value(&v, "usage_usec").map(|us| us * 1000);
        }
    }
    // The whole machine: busy jiffies (user nice system irq softirq steal), 100 a second.
    let stat = read("/proc/stat")?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|i| cpu.get(*i)).sum();
    Some(busy * 10_000_000)
}

fn meminfo(key: &str) -> Option<u64> {
    let text = read("/proc/meminfo")?;
    text.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    })
}

/// Memory used (without reclaimable page cache), the limit, and the page cache.
fn memory() -> (u64, u64, u64) {
    let machine_total = meminfo("MemTotal").unwrap_or(0);
    let machine_used = machine_total.saturating_sub(meminfo("MemAvailable").unwrap_or(0));
    let cgroup = cgroup_dir("memory").and_then(|d| {
        let (usage, limit, stat) = if let Some(u) = read(&format!("{d}/memory.usage_in_bytes")) {
            (
                u,
                read(&format!("{d}/memory.limit_in_bytes"))?,
                read(&format!("{d}/memory.stat"))?,
            )
        } else {
            (
                read(&format!("{d}/memory.current"))?,
                read(&format!("{d}/memory.max"))?,
                read(&format!("{d}/memory.stat"))?,
            )
        };
        let usage: u64 = usage.trim().parse().ok()?;
        let inactive = stat_value(&stat, "total_inactive_file")
            .or_else(|| stat_value(&stat, "inactive_file"))
            .unwrap_or(0);
        let cache = stat_value(&stat, "total_cache")
            .or_else(|| stat_value(&stat, "file"))
            .unwrap_or(0);
        let limit = limit.trim().parse::<u64>().unwrap_or(u64::MAX);
        Some((usage.saturating_sub(inactive), limit, cache))
    });
    match cgroup {
        // The root cgroup counts the whole machine; an unlimited one is bounded by the machine.
        Some((used, limit, cache)) if used > 0 => (used, limit.min(machine_total), cache),
        _ => (machine_used, machine_total, meminfo("Cached").unwrap_or(0)),
    }
}

fn disk() -> (u64, u64) {
    let root = CString::new("/").expect("no NUL");
    // SAFETY: statvfs fills the struct we give it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(root.as_ptr(), &mut st) } != 0 {
        return (0, 0);
    }
    let unit = st.f_frsize as u64;
    let total = st.f_blocks as u64 * unit;
    (total.saturating_sub(st.f_bfree as u64 * unit), total)
}

impl CpuSampler {
    /// Measures now. The first call samples CPU for a tenth of a second; later calls report
    /// the use since the call before.
    pub(crate) async fn measure(&self) -> Metrics {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let previous = *self.last.lock().unwrap();
        let previous = match previous {
            Some(p) if p.0.elapsed() < Duration::from_secs(600) => Some(p),
            _ => {
                let first = cpu_used_ns().map(|u| (Instant::now(), u));
                tokio::time::sleep(FIRST_SAMPLE).await;
                first
            }
        };
        let now = cpu_used_ns().map(|u| (Instant::now(), u));
        *self.last.lock().unwrap() = now;
        let pct = match (previous, now) {
            (Some((t0, u0)), Some((t1, u1))) => {
                let wall = t1.duration_since(t0).as_nanos().max(1) as f64;
                (u1.saturating_sub(u0) as f64 / (wall * cpus as f64) * 100.0).clamp(0.0, 100.0)
            }
            _ => 0.0,
        };
        let (mem_used, mem_total, mem_cache) = memory();
        let (disk_used, disk_total) = disk();
        let mut m = Metrics::new();
        m.timestamp = SystemTime::now();
        m.cpu_count = cpus;
        m.cpu_used_pct = (pct * 100.0).round() / 100.0;
        m.mem_used = mem_used;
        m.mem_total = mem_total;
        m.mem_cache = mem_cache;
        m.disk_used = disk_used;
        m.disk_total = disk_total;
        m
    }
}
