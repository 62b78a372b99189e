//! The cluster's share, take-over and on-demand cases with each pod on its
//! own network file system mount of the storage folder (issue 16, point 4):
//! sshfs mounts with NFS-like caches of names, attributes and missing names
//! (30 s), so a pod sees the files other pods publish late, as NFS clients
//! on different hosts do (tests/common/nfs.rs).
//!
//! What must hold: every pod takes part in a shared job (it adopts the job
//! from the plan in Redis, never by waiting to see `job.json`); no published
//! file is answered 404 by any pod; no unit that Redis says is done is
//! encoded again. Skipped (with a message) where FUSE, sshd or sshfs are
//! missing, except in CI, where that fails.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use common::cluster::{
    claims, done_units, hold_wrapper, job_id, traced_wrapper, unit_count, unit_of, wait_planned,
    Encode,
};
use common::nfs::{require_network_share, NetworkShare};
use common::{
    gen_clip, seg_files, validate_hls, wait_for, ClipSpec, Cluster, FfmpegWrapper, TestDir,
};

const JOB_LIMIT: Duration = Duration::from_secs(240);

/// Starts `name` on its own mount of the share, its ffmpeg through
/// `wrapper` if given.
async fn start_on_mount(
    cluster: &mut Cluster,
    share: &mut NetworkShare,
    dir: &TestDir,
    name: &str,
    wrapper: Option<&FfmpegWrapper>,
) {
    let mount = share
        .mount(&dir.join(format!("mnt-{name}")))
        .unwrap_or_else(|e| panic!("mounting for {name}: {e}"));
    let mut builder = cluster.builder_on(name, &mount);
    if let Some(wrapper) = wrapper {
        builder = builder.path_prefix(&wrapper.bin_dir);
    }
    cluster.start_with(name, builder).await;
}

/// A cluster whose pods will each store on their own mount of
/// `<dir>/storage`, and the share serving it; None when skipped.
fn cluster_on_share(dir: &TestDir) -> Option<(NetworkShare, Cluster)> {
    let cluster = Cluster::new(dir.path())
        .env("SEGSWARM_SLOTS", "1")
        .env("SEGSWARM_LOG", "info");
    let share = require_network_share(&dir.join("share"), cluster.storage())?;
    Some((share, cluster))
}

/// The encodes of each unit, by unit name.
fn encodes_by_unit(encodes: &[Encode]) -> BTreeMap<String, Vec<Encode>> {
    let mut by_unit: BTreeMap<String, Vec<Encode>> = BTreeMap::new();
    for encode in encodes {
        for unit in &encode.units {
            by_unit
                .entry(unit.clone())
                .or_default()
                .push(encode.clone());
        }
    }
    by_unit
}

/// No pod logged that it redoes a unit Redis says is done.
fn assert_nothing_redone(cluster: &Cluster) {
    let logs = cluster.logs();
    assert!(
        !logs.contains("redoing it"),
        "a pod redid a unit that Redis said was done:\n{logs}"
    );
}

/// Every published file of the job folder `job_dir` (as the server sees
/// it), relative to it.
fn published_files(job_dir: &Path) -> Vec<String> {
    let mut files = vec!["master.m3u8".to_string(), "thumbnail.webp".to_string()];
    for entry in std::fs::read_dir(job_dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if !path.is_dir() || name.starts_with('.') {
            continue;
        }
        let folders: Vec<(String, PathBuf)> = if name == "audio" {
            std::fs::read_dir(&path)
                .unwrap()
                .flatten()
                .map(|t| {
                    (
                        format!("audio/{}", t.file_name().to_string_lossy()),
                        t.path(),
                    )
                })
                .collect()
        } else {
            vec![(name.clone(), path.clone())]
        };
        for (prefix, folder) in folders {
            files.push(format!("{prefix}/index.m3u8"));
            for segment in seg_files(&folder) {
                let file = segment.file_name().unwrap().to_string_lossy().into_owned();
                files.push(format!("{prefix}/{file}"));
            }
        }
    }
    files
}

/// Asks every running pod for every published file of the job: each must
/// answer 200 (segments with the bytes the server holds).
async fn assert_every_pod_serves_everything(cluster: &Cluster, id: &str) {
    let job_dir = cluster.job_dir(id);
    let files = published_files(&job_dir);
    for (name, pod) in cluster.running() {
        for file in &files {
            let url = pod.url(&format!("/hls/{id}/{file}"));
            let resp = pod.client().get(&url).send().await.expect("GET a file");
            let status = resp.status().as_u16();
            let body = resp.bytes().await.unwrap();
            assert_eq!(
                status,
                200,
                "{name} {file}: {}",
                String::from_utf8_lossy(&body)
            );
            if file.ends_with(".ts") {
                let on_server = std::fs::read(job_dir.join(file)).unwrap();
                assert_eq!(body.as_ref(), on_server.as_slice(), "{name} {file}");
            }
        }
    }
    println!("{} files served by every pod", files.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_their_own_network_mounts_share_one_job() {
    let dir = TestDir::new("nfs-share");
    let Some((mut share, mut cluster)) = cluster_on_share(&dir) else {
        return;
    };
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(20.0).size(640, 360));
    let log = dir.join("encodes.log");
    let mut wrappers = Vec::new();
    for name in ["pod-a", "pod-b", "pod-c"] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        let wrapper = traced_wrapper(&dir.join(name), &log, None);
        start_on_mount(&mut cluster, &mut share, &dir, name, Some(&wrapper)).await;
        wrappers.push(wrapper);
    }
    let job = cluster
        .pod("pod-a")
        .submit(json!({ "source": source.to_str().unwrap(), "ladder": ["240p", "360p"] }))
        .await;
    let id = job_id(&job);
    let mut units = 0;
    for (name, job) in cluster
        .wait_status_everywhere(&id, &["done", "partial", "failed"], JOB_LIMIT)
        .await
    {
        assert_eq!(job["status"], "done", "{name}: {job}");
        units = unit_count(&job);
    }
    let won = cluster
        .metric_per_pod("segswarm_claims_total", &[("result", "won")])
        .await;
    println!("won claims per pod: {won:?} ({units} units)");
    for (name, value) in &won {
        assert!(*value > 0.0, "{name} took no part in the job: {won:?}");
    }
    let by_unit = encodes_by_unit(&wrappers[0].encodes());
    assert_eq!(by_unit.len(), units, "units encoded: {:?}", by_unit.keys());
    for (unit, encodes) in &by_unit {
        assert_eq!(encodes.len(), 1, "{unit} encoded {} times", encodes.len());
    }
    assert_nothing_redone(&cluster);
    assert_every_pod_serves_everything(&cluster, &id).await;
    validate_hls(&cluster.job_dir(&id), &source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pod_units_are_taken_over_on_network_mounts() {
    let dir = TestDir::new("nfs-takeover");
    let Some((mut share, cluster)) = cluster_on_share(&dir) else {
        return;
    };
    let mut cluster = cluster.env("SEGSWARM_CLAIM_TTL_MS", "2000");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(8.0).size(640, 360));
    std::fs::create_dir_all(dir.join("wrap-a")).unwrap();
    let wrapper_a = hold_wrapper(&dir.join("wrap-a"), "p-seg_", Duration::from_secs(60));
    start_on_mount(&mut cluster, &mut share, &dir, "pod-a", Some(&wrapper_a)).await;
    let job = cluster
        .pod("pod-a")
        .submit(json!({ "source": source.to_str().unwrap() }))
        .await;
    let id = job_id(&job);
    assert!(
        wait_for(Duration::from_secs(60), || !wrapper_a
            .matching("p-seg_")
            .is_empty())
        .await,
        "pod-a never started a segment\n{}",
        cluster.logs()
    );
    let units = unit_count(&wait_planned(cluster.pod("pod-a"), &id).await);
    for name in ["pod-b", "pod-c"] {
        start_on_mount(&mut cluster, &mut share, &dir, name, None).await;
    }
    // The others finish everything pod-a does not hold.
    let deadline = Instant::now() + Duration::from_secs(120);
    let held = loop {
        let held: Vec<String> = claims(&cluster, &id)
            .into_iter()
            .filter(|(_, v)| v.ends_with(" pod-a"))
            .map(|(k, _)| k)
            .collect();
        if done_units(&cluster, &id).len() + held.len() == units && !held.is_empty() {
            break held;
        }
        assert!(
            Instant::now() < deadline,
            "the other pods did not finish the free units: claims {:?}\n{}",
            claims(&cluster, &id),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("pod-a holds {held:?}");
    cluster.kill("pod-a");
    for (name, job) in cluster
        .wait_status_everywhere(&id, &["done", "partial", "failed"], JOB_LIMIT)
        .await
    {
        assert_eq!(job["status"], "done", "{name}: {job}");
        assert_eq!(unit_count(&job), units, "{name}");
    }
    let done = done_units(&cluster, &id);
    for key in &held {
        assert!(
            done.iter().any(|u| u == unit_of(key)),
            "{key} not done: {done:?}"
        );
    }
    assert_nothing_redone(&cluster);
    assert_every_pod_serves_everything(&cluster, &id).await;
    validate_hls(&cluster.job_dir(&id), &source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_requests_on_network_mounts_are_never_404() {
    let dir = TestDir::new("nfs-on-demand");
    let Some((mut share, cluster)) = cluster_on_share(&dir) else {
        return;
    };
    let mut cluster = cluster.env("SEGSWARM_PREFETCH_SEGMENTS", "0");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(12.0).size(640, 360));
    let log = dir.join("encodes.log");
    let mut wrappers = Vec::new();
    for name in ["pod-a", "pod-b", "pod-c"] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        let wrapper = traced_wrapper(&dir.join(name), &log, None);
        start_on_mount(&mut cluster, &mut share, &dir, name, Some(&wrapper)).await;
        wrappers.push(wrapper);
    }
    let job = cluster
        .pod("pod-a")
        .submit(json!({
            "source": source.to_str().unwrap(),
            "mode": "on_demand",
            "ladder": ["240p", "360p"],
        }))
        .await;
    let id = job_id(&job);
    // A player starts at once, on another pod than the planner.
    let pod_c = cluster.pod("pod-c");
    let resp = pod_c
        .client()
        .get(pod_c.url(&format!("/hls/{id}/master.m3u8")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "master.m3u8 on pod-c right after the POST"
    );
    let planned = wait_planned(cluster.pod("pod-a"), &id).await;
    let segments = planned["renditions"][0]["total"].as_u64().unwrap() as usize;
    // pod-b and pod-c ask for every segment of both renditions, both at
    // once: one of them makes each, the other waits for it and serves the
    // file it cannot see at first.
    let mut asks = Vec::new();
    for rendition in ["240p", "360p"] {
        for index in 0..segments {
            for name in ["pod-b", "pod-c"] {
                let pod = cluster.pod(name);
                let file = format!("{rendition}/seg_{index:05}.ts");
                let (client, url) = (pod.client().clone(), pod.url(&format!("/hls/{id}/{file}")));
                asks.push((
                    name,
                    file,
                    tokio::spawn(async move {
                        let resp = client.get(url).send().await.expect("GET a segment");
                        (resp.status().as_u16(), resp.bytes().await.unwrap())
                    }),
                ));
            }
        }
    }
    let job_dir = cluster.job_dir(&id);
    for (name, file, ask) in asks {
        let (status, body) = ask.await.unwrap();
        assert_eq!(
            status,
            200,
            "{name} {file}: {}",
            String::from_utf8_lossy(&body)
        );
        let on_server = std::fs::read(job_dir.join(&file)).unwrap();
        assert_eq!(body.as_ref(), on_server.as_slice(), "{name} {file}");
    }
    let by_unit = encodes_by_unit(&wrappers[0].encodes());
    for (unit, encodes) in &by_unit {
        assert_eq!(encodes.len(), 1, "{unit} encoded {} times", encodes.len());
    }
    assert_nothing_redone(&cluster);
    let job = cluster.pod("pod-b").wait_terminal(&id, JOB_LIMIT).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_every_pod_serves_everything(&cluster, &id).await;
    validate_hls(&job_dir, &source);
}
