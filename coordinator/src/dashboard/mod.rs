//! `coordinator dashboard`: a web page of a state directory's runs (a table, curves that grow
//! while runs train, events), its JSON API and Prometheus metrics. It reads the run database
//! through read-only connections, so it never holds a run up.
//!
//! [`api`] answers the page's requests, [`series`] reads and downsamples curves, [`prometheus`]
//! writes the text format; the page itself is `page.html`, and its charts are plotly.js, the
//! copy the `plotly` crate embeds.

mod api;
mod prometheus;
mod ranks;
mod series;

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use anyhow::Context;
use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use rusqlite::{Connection, OpenFlags};

use crate::run::{DATABASE, TRACE_FILE};

/// The dashboard page.
const PAGE: &str = include_str!("page.html");

/// plotly.js, cut out of the `<script>` elements the `plotly` crate embeds it in.
static PLOTLY_JS: LazyLock<String> = LazyLock::new(|| {
    let sources = plotly::Plot::offline_js_sources();
    let script = sources
        .split_once('>')
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map_or("", |(js, _)| js);
    script.to_string()
});

/// Where the dashboard reads from.
struct Dashboard {
    state_dir: PathBuf,
    database: PathBuf,
}

impl Dashboard {
    /// A read-only connection to the run database (one per request: SQLite's are cheap, and a
    /// reader never blocks the coordinator's writes under WAL).
    fn connect(&self) -> anyhow::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.database,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening {}", self.database.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(conn)
    }

    /// The timeline file of `run_id` (present when the run traced steps).
    fn trace_file(&self, run_id: &str) -> PathBuf {
        self.state_dir.join(run_id).join(TRACE_FILE)
    }
}

/// The dashboard's routes over the run database of `state_dir`.
fn router(state_dir: &Path) -> Router {
    let dashboard = Arc::new(Dashboard {
        state_dir: state_dir.to_path_buf(),
        database: state_dir.join(DATABASE),
    });
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/plotly.min.js", get(plotly_js))
        .route("/metrics", get(prometheus::metrics))
        .route("/api/runs", get(api::runs))
        .route("/api/runs/{id}/series", get(api::series))
        .route("/api/runs/{id}/events", get(api::events))
        .route("/api/runs/{id}/ranks", get(ranks::ranks))
        .route("/api/runs/{id}/trace.json", get(api::trace))
        .fallback(api::not_found)
        .with_state(dashboard)
}

async fn plotly_js() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        PLOTLY_JS.as_str(),
    )
}

/// Starts serving the dashboard of `state_dir` on `bind` in the background (on the current
/// runtime, for as long as it runs); returns its URL.
pub async fn start(state_dir: &Path, bind: &str) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding the dashboard to {bind}"))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        eprintln!(
            "warning: the dashboard listens on {addr}: anyone who reaches it sees every run of {}",
            state_dir.display()
        );
    }
    let app = router(state_dir);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            eprintln!("warning: the dashboard stopped: {err}");
        }
    });
    Ok(format!("http://{addr}/"))
}

/// `coordinator dashboard`: serves the dashboard of `state_dir` on `bind` until Ctrl-C.
pub async fn serve(state_dir: &Path, bind: &str) -> anyhow::Result<()> {
    let database = state_dir.join(DATABASE);
    anyhow::ensure!(
        database.is_file(),
        "no run database at {} (--state-dir names the folder `coordinator launch` used)",
        database.display()
    );
    let url = start(state_dir, bind).await.context("--bind")?;
    println!("dashboard at {url} (runs of {})", database.display());
    tokio::signal::ctrl_c().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_plotly_is_whole_javascript() {
        assert!(PLOTLY_JS.starts_with("/**"), "{}", &PLOTLY_JS[..40]);
        assert!(PLOTLY_JS.contains("plotly.js v"));
        assert!(PLOTLY_JS.len() > 1_000_000 && !PLOTLY_JS.contains("</script>"));
    }
}
