// Temporary until the CLI module lands.
use clap::Parser;
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    serve: berth::config::ServeArgs,
}
#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let c = berth::config::Config::load(&a.serve).unwrap();
    berth::app::serve(c).await.unwrap();
}
