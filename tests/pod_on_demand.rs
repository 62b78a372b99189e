//! On-demand jobs: the whole plan is listed at once, a segment is encoded
//! when a player asks for it (once, however many ask), the next segments are
//! prefetched, and the package plays straight from the pod's URL.

mod common;

use std::time::Duration;

use m3u8_rs::{MediaPlaylistType, Playlist};
use serde_json::json;

use common::media::ffprobe_json;
use common::{
    decode_errors, gen_clip, validate_hls, wait_for, ClipSpec, FfmpegWrapper, Pod, TestDir,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_segments_are_made_when_asked_and_once() {
    let dir = TestDir::new("pod-on-demand");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(8.0).size(640, 360));
    let wrapper = FfmpegWrapper::new(dir.path(), None, false);
    let pod = Pod::builder(&dir.join("storage"))
        .env("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap())
        .path_prefix(&wrapper.bin_dir)
        .start()
        .await;
    let job = pod
        .submit(json!({
            "source": source.to_str().unwrap(),
            "mode": "on_demand",
            "ladder": ["240p", "360p"],
            "segment_duration": 2,
        }))
        .await;
    assert_eq!(job["mode"], "on_demand", "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let job_dir = pod.job_dir(&id);
    let client = pod.client();
    let hls = |path: &str| pod.url(&format!("/hls/{id}/{path}"));

    // The master playlist appears without any video being encoded.
    let mut master = None;
    for _ in 0..600 {
        let resp = client.get(hls("master.m3u8")).send().await.unwrap();
        if resp.status().as_u16() == 200 {
            master = Some(resp.bytes().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let master = master.expect("master.m3u8 of an on-demand job within 60 s");
    let master = match m3u8_rs::parse_playlist_res(&master) {
        Ok(Playlist::MasterPlaylist(m)) => m,
        other => panic!("not a master playlist: {other:?}"),
    };
    let variants: Vec<&str> = master.variants.iter().map(|v| v.uri.as_str()).collect();
    assert_eq!(variants, ["240p/index.m3u8", "360p/index.m3u8"]);

    // Playlists list the whole plan at once, as VOD with ENDLIST.
    let mut extinf = Vec::new();
    for rendition in ["240p", "360p"] {
        let resp = client
            .get(hls(&format!("{rendition}/index.m3u8")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let cache = resp
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert_eq!(
            cache, "no-cache",
            "playlists of an unfinished job are not immutable"
        );
        let playlist = match m3u8_rs::parse_playlist_res(&resp.bytes().await.unwrap()) {
            Ok(Playlist::MediaPlaylist(p)) => p,
            other => panic!("not a media playlist: {other:?}"),
        };
        assert!(
            playlist.end_list,
            "{rendition}: on-demand playlist has ENDLIST"
        );
        assert_eq!(playlist.playlist_type, Some(MediaPlaylistType::Vod));
        assert_eq!(
            playlist.segments.len(),
            4,
            "{rendition}: 8 s in 2 s segments all listed"
        );
        let total: f32 = playlist.segments.iter().map(|s| s.duration).sum();
        assert!(
            (total - 8.0).abs() < 0.05,
            "{rendition}: EXTINF sum {total}"
        );
        extinf = playlist.segments.iter().map(|s| s.duration).collect();
    }
    // No video segment was made ahead of a request.
    assert!(
        !job_dir.join("360p/seg_00002.ts").exists() && !job_dir.join("240p/seg_00000.ts").exists(),
        "on-demand job encoded video before any request"
    );
    assert!(
        wrapper
            .matching("-seg_0")
            .iter()
            .all(|(_, a)| !a.contains("p-seg_")),
        "video encodes before any request: {:?}",
        wrapper.matching("p-seg_")
    );

    // Two players ask for the same missing segment at once.
    let url = hls("360p/seg_00002.ts");
    let (a, b) = tokio::join!(client.get(&url).send(), client.get(&url).send());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.status().as_u16(), 200, "first request");
    assert_eq!(b.status().as_u16(), 200, "second request");
    assert_eq!(
        a.headers().get("content-type").unwrap().to_str().unwrap(),
        "video/mp2t"
    );
    let (a, b) = (a.bytes().await.unwrap(), b.bytes().await.unwrap());
    assert_eq!(a, b, "both requests get the same segment");
    let on_disk = std::fs::read(job_dir.join("360p/seg_00002.ts")).unwrap();
    assert_eq!(a.as_ref(), on_disk.as_slice());
    let encodes = wrapper.matching("-360p-seg_00002.ts");
    assert_eq!(
        encodes.len(),
        1,
        "two concurrent requests must start exactly one encode: {encodes:?}"
    );

    // The segment is valid: right size, IDR first, the planned frames.
    let seg = dir.join("requested.ts");
    std::fs::write(&seg, &a).unwrap();
    let frames = ffprobe_json(
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=key_frame,pict_type,width,height",
        ],
        &seg,
    );
    let frames = frames["frames"].as_array().expect("frames");
    assert!(!frames.is_empty(), "segment has no frames");
    assert_eq!(frames[0]["key_frame"], 1, "first frame is a keyframe");
    assert_eq!(frames[0]["pict_type"], "I", "first frame is an I frame");
    assert_eq!(
        (frames[0]["width"].as_u64(), frames[0]["height"].as_u64()),
        (Some(640), Some(360))
    );
    let expected = (extinf[2] as f64 * 30.0).round() as usize;
    assert!(
        frames.len().abs_diff(expected) <= 1,
        "segment 2 has {} frames, EXTINF says {expected}",
        frames.len()
    );

    // The next segment of that rendition is prefetched; the other rendition
    // is left alone.
    let prefetched = job_dir.join("360p/seg_00003.ts");
    assert!(
        wait_for(Duration::from_secs(60), || prefetched.is_file()).await,
        "360p/seg_00003.ts was not prefetched"
    );
    assert!(
        wrapper.matching("-240p-seg_").is_empty(),
        "240p was encoded without a request"
    );

    // A player reading the pod's URL gets a package that decodes cleanly;
    // every segment is then made, each exactly once.
    let errors = decode_errors(&hls("master.m3u8"));
    assert!(errors.trim().is_empty(), "decoding from the pod:\n{errors}");
    for rendition in ["240p", "360p"] {
        for index in 0..4 {
            let needle = format!("-{rendition}-seg_{index:05}.ts");
            assert_eq!(
                wrapper.matching(&needle).len(),
                1,
                "{needle} encoded once: {:?}",
                wrapper.matching(&needle)
            );
        }
    }
    let job = pod.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "done", "every unit made: {job}");
    validate_hls(&job_dir, &source);
}
