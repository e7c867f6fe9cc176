//! The end-to-end suite every ingest passes (`pum-e2e`), against the real `pum-collector
//! standalone`: the core's answers, exact counts, replays counted once, and a replay after
//! `kill -9` counted once.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::Server;
use pum_e2e::Target;

fn start(dir: &std::path::Path) -> (Server, Target) {
    let server = Server::start(dir, &["--rate-limit", "0"]);
    let target = Target::new(
        "standalone",
        &server.ingest,
        &server.metrics,
        Duration::from_secs(5),
    );
    (server, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standalone_passes_the_end_to_end_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, target) = start(dir.path());
    pum_e2e::run(&target).await;
    let data: PathBuf = dir.path().to_owned();
    let mut holder = Some(server);
    let _target = pum_e2e::replay_after_restart_counts_once(target, |_| {
        let mut old = holder.take().expect("the server");
        // kill -9: no flush, no compaction.
        old.child.kill().expect("kill");
        old.child.wait().expect("wait");
        let (server, target) = start(&data);
        holder = Some(server);
        std::future::ready(target)
    })
    .await;
}
