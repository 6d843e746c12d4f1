//! The `process_*` metrics every etcd exports (Prometheus' process collector): CPU time,
//! memory, file descriptors and start time, and etcd's own `os_fd_used` and `os_fd_limit`
//! (the same descriptor count and soft limit), read from `/proc/self` when `/metrics` is
//! rendered. Dashboards and alerts written for etcd use them, and `etcdctl check datascale`
//! reads `process_resident_memory_bytes` before and after its load.

use prometheus::{Counter, Gauge, Registry};

/// Go's procfs counts CPU time in these ticks per second (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

pub struct ProcessMetrics {
    /// Bytes per page, for the resident set `/proc/self/stat` counts in pages.
    page_size: f64,
    cpu_seconds: Counter,
    open_fds: Gauge,
    max_fds: Gauge,
    /// etcd's names for the two above (`os_fd_used`, `os_fd_limit`).
    fd_used: Gauge,
    fd_limit: Gauge,
    virtual_memory: Gauge,
    virtual_memory_max: Gauge,
    resident_memory: Gauge,
    start_time: Gauge,
}

/// What `/proc/self/stat` tells, in the metrics' units.
#[derive(Debug, PartialEq)]
struct Stat {
    cpu_seconds: f64,
    start_ticks: f64,
    virtual_bytes: f64,
    resident_pages: f64,
}

impl ProcessMetrics {
    /// Creates the metrics and registers them in `registry`. The start time is read here,
    /// once: it never changes.
    pub fn register(registry: &Registry) -> ProcessMetrics {
        let gauge = |name: &str, help: &str| {
            let g = Gauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let cpu_seconds = Counter::new("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.")
            .expect("valid metric");
        registry.register(Box::new(cpu_seconds.clone())).expect("unique metric");
        let metrics = ProcessMetrics {
            page_size: page_size(),
            cpu_seconds,
            open_fds: gauge("process_open_fds", "Number of open file descriptors."),
            max_fds: gauge("process_max_fds", "Maximum number of open file descriptors."),
            fd_used: gauge("os_fd_used", "The number of used file descriptors."),
            fd_limit: gauge("os_fd_limit", "The file descriptor limit."),
            virtual_memory: gauge("process_virtual_memory_bytes", "Virtual memory size in bytes."),
            virtual_memory_max: gauge(
                "process_virtual_memory_max_bytes",
                "Maximum amount of virtual memory available in bytes.",
            ),
            resident_memory: gauge("process_resident_memory_bytes", "Resident memory size in bytes."),
            start_time: gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds."),
        };
        let stat = std::fs::read_to_string("/proc/self/stat").ok().as_deref().and_then(parse_stat);
        let boot = std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(parse_boot_time);
        if let (Some(stat), Some(boot)) = (stat, boot) {
            metrics.start_time.set(boot + stat.start_ticks / USER_HZ);
        }
        metrics
    }

    /// Reads `/proc/self` into the metrics that move. A file that cannot be read leaves its
    /// metrics at their last value (`/proc` is always there on Linux; this only guards odd
    /// sandboxes).
    pub fn refresh(&self) {
        if let Some(stat) = std::fs::read_to_string("/proc/self/stat").ok().as_deref().and_then(parse_stat) {
            // A counter only moves up; CPU time never goes back, so this sets it.
            let delta = stat.cpu_seconds - self.cpu_seconds.get();
            if delta > 0.0 {
                self.cpu_seconds.inc_by(delta);
            }
            self.virtual_memory.set(stat.virtual_bytes);
            self.resident_memory.set(stat.resident_pages * self.page_size);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            // The directory handle itself is one of the entries, as in Go's count (both the
            // process collector's and etcd's `runtime.FDUsage`).
            let used = fds.count() as f64;
            self.open_fds.set(used);
            self.fd_used.set(used);
        }
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
            if let Some(n) = soft_limit(&limits, "Max open files") {
                self.max_fds.set(n);
                self.fd_limit.set(n);
            }
            if let Some(n) = soft_limit(&limits, "Max address space") {
                self.virtual_memory_max.set(n);
            }
        }
    }
}

fn page_size() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as f64
    } else {
        4096.0
    }
}

/// Fields 14, 15 (utime, stime), 22 (starttime), 23 (vsize) and 24 (rss) of `proc(5)`'s
/// stat line. The command name (field 2) may hold spaces and parentheses, so fields are
/// counted from after its last `)`.
fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state).
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse::<f64>().ok() };
    Some(Stat {
        cpu_seconds: (field(14)? + field(15)?) / USER_HZ,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// The `btime` line of `/proc/stat`: boot time, in seconds since the epoch.
fn parse_boot_time(stat: &str) -> Option<f64> {
    stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// The soft limit of the `/proc/self/limits` row `name`; `unlimited` as Go's procfs reads it
/// (the largest u64).
fn soft_limit(limits: &str, name: &str) -> Option<f64> {
    let row = limits.lines().find(|l| l.starts_with(name))?;
    let soft = row[name.len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        Some(u64::MAX as f64)
    } else {
        soft.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line =
            "4242 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 9 0 123456 104857600 2560 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat { cpu_seconds: 4.0, start_ticks: 123456.0, virtual_bytes: 104857600.0, resident_pages: 2560.0 })
        );
        assert_eq!(parse_stat("4242 (no fields)"), None);
    }

    #[test]
    fn limits_and_boot_time() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 1048576              files     \n\
                      Max address space         unlimited            unlimited            bytes     \n";
        assert_eq!(soft_limit(limits, "Max open files"), Some(1024.0));
        assert_eq!(soft_limit(limits, "Max address space"), Some(u64::MAX as f64));
        assert_eq!(soft_limit(limits, "Max processes"), None);
        assert_eq!(parse_boot_time("cpu  1 2 3\nbtime 1764900000\nprocesses 9\n"), Some(1764900000.0));
    }

    #[test]
    fn this_process_reports_itself() {
        let registry = Registry::new();
        let m = ProcessMetrics::register(&registry);
        m.refresh();
        assert!(m.resident_memory.get() > 1e6, "rss {}", m.resident_memory.get());
        assert!(m.open_fds.get() >= 3.0);
        assert!(m.max_fds.get() >= m.open_fds.get());
        assert!(m.fd_used.get() >= 3.0 && m.fd_limit.get() >= m.fd_used.get());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let started = m.start_time.get();
        assert!(started > now - 3600.0 && started <= now + 1.0, "start {started}, now {now}");
        assert_eq!(registry.gather().len(), 9);
    }
}
