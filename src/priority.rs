//! Control-plane threads (the manifests watcher, table compiles) run at a
//! lower CPU priority than the proxy's workers: on a saturated core,
//! requests come first and a table change waits for spare cycles instead
//! of taking them from traffic. Nice 10 still gets about a tenth of a
//! contended core (CFS weights 110 vs 1024), so changes are delayed, never
//! starved; on an idle core nothing changes.

/// The nice value control-plane threads take.
pub const CONTROL_PLANE_NICE: i32 = 10;

/// Lower the calling thread's priority to [`CONTROL_PLANE_NICE`] (Linux
/// sets it per thread). Failure (a sandbox forbidding it) is logged once
/// and otherwise ignored.
pub fn control_plane_thread() {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), CONTROL_PLANE_NICE) {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(
            || tracing::debug!(error = %e, "could not lower the control-plane thread's priority"),
        );
    }
}
