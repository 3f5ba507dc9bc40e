//! Running work in the background: a prune that runs beside backups lowers its own thread's CPU
//! priority (nice +10) and I/O priority (the idle class, which the kernel's mq-deadline and BFQ
//! schedulers serve after every other class, and within `prio_aging_expire`, 10 s by default,
//! at the latest), so that the backups go first. Threads it starts inherit both.

/// How much lower the CPU priority of background work is.
const BACKGROUND_NICE: i32 = 10;

/// `IOPRIO_WHO_PROCESS` of `ioprio_set(2)`: with id 0, the calling thread.
const IOPRIO_WHO_PROCESS: libc::c_long = 1;
/// `IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT`, level 0.
const IOPRIO_IDLE: libc::c_long = 3 << 13;

/// Lowers the calling thread's CPU and I/O priority. Failures are ignored: the work only runs
/// with the priority it had.
pub fn lower_for_background() {
    let _ = rustix::process::nice(BACKGROUND_NICE);
    // SAFETY: ioprio_set takes three integers and touches no memory of this process; an
    // unsupported call fails with an error code, which is ignored.
    #[allow(unsafe_code)]
    let _ = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, IOPRIO_IDLE) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_background_thread_runs_at_lower_priority() {
        let nice = std::thread::spawn(|| {
            super::lower_for_background();
            rustix::process::getpriority_process(None).expect("getpriority")
        })
        .join()
        .expect("thread");
        let own = rustix::process::getpriority_process(None).expect("getpriority");
        assert!(nice > own, "nice {nice} after lowering, {own} here");
    }
}
