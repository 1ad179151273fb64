use clap::Parser;

// Mapping allocates a few short strings per field; glibc's allocator spent a third of the
// sync's CPU on them. mimalloc is a well-kept drop-in. Its v2 line is chosen in Cargo.toml:
// rows are allocated on one thread and freed on another all through the pipeline, and v3
// kept about 20 MiB more resident for that pattern (peak live heap of a 1M-row backfill:
// 30 MiB; peak RSS 86-88 MiB with v2, 102-112 MiB with v3).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v2's `mi_option_e`.
const MI_OPTION_PURGE_DELAY: std::os::raw::c_int = 15;

extern "C" {
    fn mi_option_set(option: std::os::raw::c_int, value: std::os::raw::c_long);
}

fn main() {
    // `capi-sync status | head` should end quietly when head closes the pipe, like any Unix
    // tool, instead of panicking in println!.
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = capi_sync::cli::Cli::parse();
    // Return freed memory to the OS after 1 ms instead of mimalloc's 10 ms: a backfill's
    // peak RSS stays near its working set (about 90 MiB at 1M rows instead of 107 MiB with
    // the default). Returning it at once (0) kept it 3 MiB lower but paid 2 CPU-seconds per
    // million rows in page faults, a quarter of the sync's CPU. `MIMALLOC_PURGE_DELAY`
    // overrides it. The sandbox (a test stand-in) keeps mimalloc's default.
    let is_sandbox = matches!(cli.command, capi_sync::cli::Command::Sandbox(_));
    if !is_sandbox && std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores an option value; no other thread exists yet (the
        // runtime starts below).
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 1) };
    }
    capi_sync::cli::init_tracing(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the async runtime starts");
    let code = runtime.block_on(capi_sync::cli::run(cli));
    std::process::exit(code);
}
