//! The baseline for `bench/api.sh`: a bare axum server with one GET handler that returns a small
//! JSON body, on the same tokio multi-thread runtime and axum features as `callflow serve`, but
//! with no store, authentication, middleware or metrics.
//!
//! Usage: `cargo run --release --example bare -p callflow-api -- 127.0.0.1:8081`, then
//! `GET /bare.json`.

use axum::Router;
use axum::routing::get;

async fn bare() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "sid": "CA0123456789abcdef0123456789abcdef",
        "status": "queued",
        "to": "+15558675310",
        "from": "+15005550006",
    }))
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        eprintln!("bare: listening on {}", listener.local_addr()?);
        let app = Router::new().route("/bare.json", get(bare));
        axum::serve(listener, app).await
    })
}
