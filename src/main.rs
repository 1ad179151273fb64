use clap::Parser;

// Mapping allocates a few short strings per field; glibc's allocator spent a third of the
// sync's CPU on them. mimalloc is a well-kept drop-in. Its v2 line is chosen in Cargo.toml:
// rows are allocated on one thread and freed on another all through the pipeline, and v3
// kept about 20 MiB more resident for that pattern (peak live heap of a 1M-row backfill:
// 30 MiB; peak RSS 86-88 MiB with v2, 102-112 MiB with v3).
//
// Its `no_thp` feature keeps it from asking for transparent huge pages: with them, every
// region it touched afresh was zeroed 2 MiB at a time and counted whole in RSS. Without them
// a 1M-row backfill peaks at 72-77 MiB with mimalloc's default purge delay (10 ms), where
// huge pages needed a 1 ms delay to stay near 90 MiB, and that delay cost about 7% of the
// sync's CPU in page faults.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v2's `mi_option_e` (`include/mimalloc.h`): how many
/// milliseconds freed memory stays committed before it goes back to the system (10 by default).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Freed memory goes back to the system after 1 ms instead of mimalloc's 10, unless
/// `MIMALLOC_PURGE_DELAY` says otherwise. Without huge pages this costs little: in paired
/// 5M-row default backfills the peak RSS fell from 79-80 MiB to 72-73 MiB for about 1% more
/// time (2-3% more CPU in capi-sync); with the 10 ms delay the 5M-row peak sat on 80 MiB.
/// Set in `main`, not through the environment: mimalloc reads its options as the process
/// loads, before any of our code runs.
fn shorten_purge_delay() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one option of the allocator this binary links (a plain store of a
        // number it reads when it next purges); no other thread is running yet.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 1) }
    }
}

fn main() {
    // `capi-sync status | head` should end quietly when head closes the pipe, like any Unix
    // tool, instead of panicking in println!.
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    shorten_purge_delay();
    let cli = capi_sync::cli::Cli::parse();
    capi_sync::cli::init_tracing(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the async runtime starts");
    let code = runtime.block_on(capi_sync::cli::run(cli)).code();
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    unsafe extern "C" {
        fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
    }

    /// The option's number is mimalloc's purge delay: it holds what mimalloc read for it at
    /// load (`MIMALLOC_PURGE_DELAY`, else the documented default of 10 ms), and 1 after the
    /// change unless that variable is set.
    #[test]
    fn the_purge_delay_is_shortened_to_one_millisecond_unless_set() {
        let from_env: Option<std::ffi::c_long> = std::env::var("MIMALLOC_PURGE_DELAY")
            .ok()
            .map(|v| v.trim().parse().expect("a number"));
        // SAFETY: reads and sets one allocator option (plain loads and stores).
        unsafe {
            assert_eq!(
                mi_option_get(super::MI_OPTION_PURGE_DELAY),
                from_env.unwrap_or(10)
            );
            super::shorten_purge_delay();
            assert_eq!(
                mi_option_get(super::MI_OPTION_PURGE_DELAY),
                from_env.unwrap_or(1)
            );
        }
    }
}
