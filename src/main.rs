use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = capi_sync::cli::Cli::parse();
    capi_sync::cli::init_tracing(cli.log_format);
    let code = capi_sync::cli::run(cli).await;
    std::process::exit(code);
}
