//! `floor`: the raw floor server for `bench/run` (see `floor.rs`).
//!
//! ```text
//! floor [--listen 127.0.0.1:0]
//! ```

mod floor;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:0".to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or_else(|| anyhow::anyhow!("--listen needs an address"))?,
            other => anyhow::bail!("unknown argument {other}; usage: floor [--listen ADDR]"),
        }
    }
    floor::run(listen.parse()?).await
}
