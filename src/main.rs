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

fn main() {
    // `capi-sync status | head` should end quietly when head closes the pipe, like any Unix
    // tool, instead of panicking in println!.
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = capi_sync::cli::Cli::parse();
    capi_sync::cli::init_tracing(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the async runtime starts");
    let code = runtime.block_on(capi_sync::cli::run(cli)).code();
    std::process::exit(code);
}
