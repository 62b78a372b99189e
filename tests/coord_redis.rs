//! The Redis coordinator against a real `redis-server`: claims, leases,
//! stale tokens, takeovers, waits woken by pub/sub, races between pods, the
//! key layout and a server that goes away and comes back.
//!
//! Each test starts its own server on a free loopback port; two
//! coordinators on one server stand for two pods.

mod common;

use common::RedisServer;
use segswarm::coordination::{
    ClaimOutcome, ClusterCapacity, Completion, CoordError, Coordinator, Lease, Metrics, Mode,
    RedisCoordinator, RedisSettings, WaitOutcome,
};
use segswarm::pipeline::Unit;
use segswarm::settings::ClaimTtl;
use segswarm::JobId;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn pod(server: &RedisServer, claim_ttl: Duration) -> (RedisCoordinator, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let mut settings = RedisSettings::new(server.url());
    settings.op_timeout = Duration::from_secs(1);
    let ttl = ClaimTtl::from_millis(claim_ttl.as_millis() as u64);
    assert_eq!(ttl.get(), claim_ttl, "tests use TTLs the pod accepts");
    let coord = RedisCoordinator::new(&settings, ttl, metrics.clone()).expect("coordinator");
    (coord, metrics)
}

fn segment(index: usize) -> Unit {
    Unit::Video {
        rendition: "240p".into(),
        index,
    }
}

fn lease_of(outcome: &ClaimOutcome) -> Lease {
    match outcome {
        ClaimOutcome::Won { lease, .. } => lease.clone(),
        other => panic!("expected a won claim, got {other:?}"),
    }
}

async fn claim_one(
    coord: &RedisCoordinator,
    job: JobId,
    unit: &Unit,
    worker: &str,
) -> ClaimOutcome {
    let mut outcomes = coord
        .claim(job, std::slice::from_ref(unit), worker)
        .await
        .expect("claim");
    assert_eq!(outcomes.len(), 1);
    outcomes.remove(0)
}

fn claim_key(job: JobId, unit: &Unit) -> String {
    format!("segswarm:{{{job}}}:claim:{unit}")
}

/// Waits until the coordinator's pub/sub connection is subscribed.
async fn notices_ready(coord: &RedisCoordinator) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !coord.notices_connected() {
        assert!(Instant::now() < deadline, "pub/sub never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn claim_is_won_then_held_then_done() {
    let server = RedisServer::start();
    let (a, metrics) = pod(&server, Duration::from_secs(30));
    let (b, _) = pod(&server, Duration::from_secs(30));
    assert_eq!(a.mode(), Mode::Distributed);
    assert_eq!(a.claim_ttl(), Duration::from_secs(30));
    let job = JobId::new_v4();

    let first = claim_one(&a, job, &segment(0), "pod-a").await;
    let ClaimOutcome::Won { lease, takeover } = &first else {
        panic!("expected a win, got {first:?}")
    };
    assert!(!takeover);
    assert_eq!(lease.worker_id, "pod-a");
    assert_eq!(lease.unit, segment(0));
    assert_eq!(lease.token.len(), 36, "a UUID v4 token: {}", lease.token);
    let value: String = server.command(&["GET", &claim_key(job, &segment(0))]);
    assert_eq!(value, format!("{} pod-a", lease.token));
    let pttl: i64 = server.command(&["PTTL", &claim_key(job, &segment(0))]);
    assert!(pttl > 29_000 && pttl <= 30_000, "PTTL {pttl}");

    let second = claim_one(&b, job, &segment(0), "pod-b").await;
    assert_eq!(
        second,
        ClaimOutcome::Held {
            holder: "pod-a".into()
        }
    );

    assert_eq!(a.complete(lease).await.unwrap(), Completion::Completed);
    let exists: i64 = server.command(&["EXISTS", &claim_key(job, &segment(0))]);
    assert_eq!(exists, 0, "complete deletes our claim");
    assert_eq!(
        claim_one(&b, job, &segment(0), "pod-b").await,
        ClaimOutcome::Done
    );

    // mark_done (output found on storage) makes a unit done without a claim.
    a.mark_done(job, &segment(1)).await.unwrap();
    assert_eq!(
        claim_one(&b, job, &segment(1), "pod-b").await,
        ClaimOutcome::Done
    );

    let claims = |result: &str| metrics.claims.with_label_values(&[result]).get();
    assert_eq!(claims("won"), 1);
    assert_eq!(claims("error"), 0);
    assert_eq!(metrics.claim_seconds.get_sample_count(), 1);
    assert_eq!(metrics.redis_up.get(), 1);
    assert!(metrics
        .render()
        .contains("segswarm_claims_total{result=\"already_done\"} 0"));
}

#[tokio::test]
async fn batch_claim_takes_several_units_in_one_round_trip() {
    let server = RedisServer::start();
    let (a, metrics) = pod(&server, Duration::from_secs(30));
    let (b, _) = pod(&server, Duration::from_secs(30));
    let job = JobId::new_v4();
    let ladder = |index: usize| -> Vec<Unit> {
        ["240p", "480p", "720p"]
            .iter()
            .map(|rendition| Unit::Video {
                rendition: rendition.to_string(),
                index,
            })
            .collect()
    };
    // Warm up: the first call loads the script (NOSCRIPT, SCRIPT LOAD).
    b.claim(job, &[segment(99)], "pod-b").await.unwrap();
    let _: String = server.command(&["CONFIG", "RESETSTAT"]);

    let won = a.claim(job, &ladder(0), "pod-a").await.unwrap();
    assert_eq!(won.len(), 3);
    assert!(won.iter().all(|outcome| matches!(
        outcome,
        ClaimOutcome::Won {
            takeover: false,
            ..
        }
    )));
    let stats: String = server.command(&["INFO", "commandstats"]);
    let evalsha = stats
        .lines()
        .find(|line| line.starts_with("cmdstat_evalsha:"))
        .unwrap_or_else(|| panic!("no evalsha in\n{stats}"));
    assert!(evalsha.starts_with("cmdstat_evalsha:calls=1,"), "{evalsha}");
    assert!(!stats.contains("cmdstat_eval:"), "{stats}");

    // Complete one, leave one held, and add a free one: one call answers
    // all three kinds.
    let leases: Vec<Lease> = won.iter().map(lease_of).collect();
    a.complete(&leases[0]).await.unwrap();
    let mut mixed = ladder(0)[..2].to_vec();
    mixed.push(segment(1));
    let outcomes = b.claim(job, &mixed, "pod-b").await.unwrap();
    assert_eq!(outcomes[0], ClaimOutcome::Done);
    assert_eq!(
        outcomes[1],
        ClaimOutcome::Held {
            holder: "pod-a".into()
        }
    );
    assert!(matches!(&outcomes[2], ClaimOutcome::Won { lease, .. } if lease.unit == segment(1)));
    assert_eq!(metrics.claims.with_label_values(&["won"]).get(), 3);
    assert!(a.claim(job, &[], "pod-a").await.unwrap().is_empty());
}

#[tokio::test]
async fn renew_extends_a_lease_and_fails_with_a_stale_token() {
    let server = RedisServer::start();
    let (a, metrics) = pod(&server, Duration::from_millis(400));
    let (b, _) = pod(&server, Duration::from_millis(400));
    let job = JobId::new_v4();
    let lease = lease_of(&claim_one(&a, job, &segment(0), "pod-a").await);

    // Renewed every 200 ms, the lease outlives its 400 ms TTL.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(a.renew(&lease).await.unwrap());
    }
    let pttl: i64 = server.command(&["PTTL", &claim_key(job, &segment(0))]);
    assert!(pttl > 300, "renew sets the TTL again: {pttl}");
    assert!(matches!(
        claim_one(&b, job, &segment(0), "pod-b").await,
        ClaimOutcome::Held { .. }
    ));

    let stale = Lease {
        token: segswarm::coordination::new_token(),
        ..lease.clone()
    };
    assert!(
        !b.renew(&stale).await.unwrap(),
        "another token never renews"
    );
    let value: String = server.command(&["GET", &claim_key(job, &segment(0))]);
    assert!(value.starts_with(&lease.token), "{value}");

    // Without renewals the lease expires and renewing finds it lost.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!a.renew(&lease).await.unwrap());
    let renewals = |result: &str| metrics.lease_renewals.with_label_values(&[result]).get();
    assert_eq!(renewals("renewed"), 4);
    assert_eq!(renewals("lost"), 1);
    assert_eq!(renewals("error"), 0);
}

#[tokio::test]
async fn stale_release_or_complete_never_touches_a_newer_claim() {
    let server = RedisServer::start();
    let (a, _) = pod(&server, Duration::from_millis(100));
    let (b, b_metrics) = pod(&server, Duration::from_secs(30));
    let job = JobId::new_v4();
    let unit = segment(0);

    // Pod A's claim expires (it hung); pod B takes the unit over.
    let old = lease_of(&claim_one(&a, job, &unit, "pod-a").await);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let newer = claim_one(&b, job, &unit, "pod-b").await;
    assert!(
        matches!(&newer, ClaimOutcome::Won { takeover: true, .. }),
        "{newer:?}"
    );
    let newer = lease_of(&newer);
    assert_eq!(b_metrics.takeovers.get(), 1);

    // A wakes up: its renew, release and complete must leave B's claim alone.
    assert!(!a.renew(&old).await.unwrap());
    assert_eq!(a.release(&old, true).await.unwrap(), 1);
    let value: String = server.command(&["GET", &claim_key(job, &unit)]);
    assert_eq!(
        value,
        format!("{} pod-b", newer.token),
        "stale release kept B's claim"
    );
    assert_eq!(
        claim_one(&a, job, &unit, "pod-c").await,
        ClaimOutcome::Held {
            holder: "pod-b".into()
        }
    );
    assert_eq!(
        a.complete(&old).await.unwrap(),
        Completion::CompletedAfterLoss
    );
    let value: String = server.command(&["GET", &claim_key(job, &unit)]);
    assert_eq!(
        value,
        format!("{} pod-b", newer.token),
        "stale complete kept B's claim"
    );
    assert!(b.renew(&newer).await.unwrap(), "B's lease is intact");
    assert_eq!(b.complete(&newer).await.unwrap(), Completion::Completed);
}

#[tokio::test]
async fn release_counts_failed_attempts() {
    let server = RedisServer::start();
    let (a, _) = pod(&server, Duration::from_secs(30));
    let job = JobId::new_v4();
    let unit = Unit::Audio { track: 0 };
    let mut expected = Vec::new();
    let mut got = Vec::new();
    for (failed, attempts) in [(true, 1), (true, 2), (false, 2), (true, 3)] {
        let lease = lease_of(&claim_one(&a, job, &unit, "pod-a").await);
        got.push(a.release(&lease, failed).await.unwrap());
        expected.push(attempts);
    }
    assert_eq!(got, expected);
    let stored: String =
        server.command(&["HGET", &format!("segswarm:{{{job}}}:attempts"), "audio/0"]);
    assert_eq!(stored, "3");
}

#[tokio::test]
async fn takeover_only_after_an_expired_claim() {
    let server = RedisServer::start();
    let (a, metrics) = pod(&server, Duration::from_millis(100));
    let job = JobId::new_v4();
    let unit = Unit::Thumbnail;

    // Released and claimed again: not a takeover.
    let lease = lease_of(&claim_one(&a, job, &unit, "pod-a").await);
    a.release(&lease, false).await.unwrap();
    assert!(matches!(
        claim_one(&a, job, &unit, "pod-b").await,
        ClaimOutcome::Won {
            takeover: false,
            ..
        }
    ));
    // Left to expire and claimed again: a takeover.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(matches!(
        claim_one(&a, job, &unit, "pod-c").await,
        ClaimOutcome::Won { takeover: true, .. }
    ));
    assert_eq!(metrics.takeovers.get(), 1);
}

#[tokio::test]
async fn waiter_wakes_on_completion_within_milliseconds() {
    let server = RedisServer::start();
    let (a, _) = pod(&server, Duration::from_secs(30));
    let (b, b_metrics) = pod(&server, Duration::from_secs(30));
    let b = Arc::new(b);
    notices_ready(&b).await;
    let job = JobId::new_v4();

    let mut latencies = Vec::new();
    for index in 0..5 {
        let lease = lease_of(&claim_one(&a, job, &segment(index), "pod-a").await);
        let waiter = spawn_wait(&b, job, segment(index), Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !waiter.is_finished(),
            "the waiter waits while A holds the unit"
        );
        let completed_at = Instant::now();
        a.complete(&lease).await.unwrap();
        let (outcome, woke_at) = waiter.await.unwrap();
        assert_eq!(outcome.unwrap(), WaitOutcome::Done);
        latencies.push(woke_at - completed_at);
    }
    println!("hand-off latency (complete() called -> waiter returns Done): {latencies:?}");
    for latency in &latencies {
        assert!(
            *latency < Duration::from_millis(50),
            "waiter woke {latency:?} after the completion"
        );
    }
    assert_eq!(b_metrics.unit_waits.get(), 5);
    assert_eq!(b_metrics.unit_wait_seconds.get_sample_count(), 5);
}

/// Runs `wait_for` on its own task; yields the outcome and when it returned.
fn spawn_wait(
    coord: &Arc<RedisCoordinator>,
    job: JobId,
    unit: Unit,
    timeout: Duration,
) -> tokio::task::JoinHandle<(Result<WaitOutcome, CoordError>, Instant)> {
    let coord = coord.clone();
    tokio::spawn(async move {
        let outcome = coord.wait_for(job, &unit, timeout).await;
        (outcome, Instant::now())
    })
}

#[tokio::test]
async fn waiter_gets_free_when_the_holder_dies_or_releases() {
    let server = RedisServer::start();
    let (b, _) = pod(&server, Duration::from_secs(30));
    let b = Arc::new(b);
    notices_ready(&b).await;
    let job = JobId::new_v4();

    // The holder is killed (-9): it never renews nor releases; the waiter
    // sees the unit free once the claim's TTL has run out.
    {
        let (dying, _) = pod(&server, Duration::from_millis(300));
        claim_one(&dying, job, &segment(0), "pod-a").await;
    }
    let started = Instant::now();
    let outcome = b
        .wait_for(job, &segment(0), Duration::from_secs(10))
        .await
        .unwrap();
    let waited = started.elapsed();
    println!("waiter saw the dead holder's claim expire after {waited:?} (TTL 300 ms)");
    assert_eq!(outcome, WaitOutcome::Free);
    assert!(
        waited > Duration::from_millis(200) && waited < Duration::from_secs(1),
        "{waited:?}"
    );
    assert!(matches!(
        claim_one(&b, job, &segment(0), "pod-b").await,
        ClaimOutcome::Won { takeover: true, .. }
    ));

    // The holder releases (SIGTERM): the waiter wakes on the notice.
    let (a, _) = pod(&server, Duration::from_secs(30));
    let lease = lease_of(&claim_one(&a, job, &segment(1), "pod-a").await);
    let waiter = spawn_wait(&b, job, segment(1), Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    let released_at = Instant::now();
    a.release(&lease, false).await.unwrap();
    let (outcome, woke_at) = waiter.await.unwrap();
    assert_eq!(outcome.unwrap(), WaitOutcome::Free);
    let latency = woke_at - released_at;
    println!("waiter woke {latency:?} after a release");
    assert!(latency < Duration::from_millis(50), "{latency:?}");

    // A holder that keeps its claim: the wait ends at the timeout.
    claim_one(&a, job, &segment(2), "pod-a").await;
    let started = Instant::now();
    let outcome = b
        .wait_for(job, &segment(2), Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(outcome, WaitOutcome::StillHeld);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(1),
        "{waited:?}"
    );
    // Nothing held, nothing done: free at once.
    assert_eq!(
        b.wait_for(job, &segment(3), Duration::from_secs(5))
            .await
            .unwrap(),
        WaitOutcome::Free
    );
}

#[tokio::test]
async fn eight_racing_pods_one_winner() {
    let server = RedisServer::start();
    let job = JobId::new_v4();
    let pods: Vec<Arc<RedisCoordinator>> = (0..8)
        .map(|_| Arc::new(pod(&server, Duration::from_secs(30)).0))
        .collect();
    for index in 0..20 {
        let start = Arc::new(tokio::sync::Barrier::new(pods.len()));
        let mut racers = Vec::new();
        for (n, coord) in pods.iter().enumerate() {
            let coord = coord.clone();
            let start = start.clone();
            racers.push(tokio::spawn(async move {
                start.wait().await;
                claim_one(&coord, job, &segment(index), &format!("pod-{n}")).await
            }));
        }
        let mut outcomes = Vec::new();
        for racer in racers {
            outcomes.push(racer.await.unwrap());
        }
        let winners: Vec<&Lease> = outcomes
            .iter()
            .filter_map(|outcome| match outcome {
                ClaimOutcome::Won { lease, .. } => Some(lease),
                _ => None,
            })
            .collect();
        assert_eq!(winners.len(), 1, "{outcomes:?}");
        let winner = winners[0].worker_id.clone();
        for outcome in &outcomes {
            match outcome {
                ClaimOutcome::Won { .. } => {}
                ClaimOutcome::Held { holder } => assert_eq!(holder, &winner),
                other => panic!("{other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn every_key_of_a_job_carries_its_hash_tag() {
    let server = RedisServer::start();
    let (a, _) = pod(&server, Duration::from_secs(30));
    let jobs = [JobId::new_v4(), JobId::new_v4()];
    for job in jobs {
        let units = [
            segment(0),
            segment(1),
            Unit::Audio { track: 0 },
            Unit::Thumbnail,
        ];
        let outcomes = a.claim(job, &units, "pod-a").await.unwrap();
        let leases: Vec<Lease> = outcomes.iter().map(lease_of).collect();
        a.complete(&leases[0]).await.unwrap();
        a.release(&leases[1], true).await.unwrap();
        a.mark_done(job, &segment(7)).await.unwrap();
        a.renew(&leases[2]).await.unwrap();
    }
    let keys = server.keys("*");
    println!("keys: {keys:#?}");
    for key in &keys {
        assert!(
            jobs.iter()
                .any(|job| key.starts_with(&format!("segswarm:{{{job}}}:"))),
            "key without a job's hash tag: {key}"
        );
    }
    for job in jobs {
        let tag = format!("{{{job}}}");
        let mine: Vec<&String> = keys
            .iter()
            .filter(|key| key.contains(&job.to_string()))
            .collect();
        // done, claimed, attempts and the two claims still held.
        assert_eq!(mine.len(), 5, "{mine:?}");
        assert!(mine.iter().all(|key| key.contains(&tag)));
    }

    // forget: the job's sets expire in a day, claims keep their own TTL.
    a.forget(jobs[0]).await.unwrap();
    for name in ["done", "claimed", "attempts"] {
        let ttl: i64 = server.command(&["TTL", &format!("segswarm:{{{}}}:{name}", jobs[0])]);
        assert!(ttl > 86_000 && ttl <= 86_400, "{name}: TTL {ttl}");
        let other: i64 = server.command(&["TTL", &format!("segswarm:{{{}}}:{name}", jobs[1])]);
        assert_eq!(other, -1, "forget touches only its job");
    }
}

#[tokio::test]
async fn redis_outage_gives_errors_then_recovers() {
    let mut server = RedisServer::start();
    let (a, metrics) = pod(&server, Duration::from_secs(30));
    let (b, b_metrics) = pod(&server, Duration::from_secs(30));
    let b = Arc::new(b);
    notices_ready(&b).await;
    let job = JobId::new_v4();
    let lease = lease_of(&claim_one(&a, job, &segment(0), "pod-a").await);
    assert_eq!(metrics.redis_up.get(), 1);

    server.stop();
    let started = Instant::now();
    let unavailable = |result: Result<(), CoordError>, what: &str| match result {
        Err(CoordError::Unavailable(message)) => {
            println!("{what} while Redis is down: {message}");
            assert!(message.contains(&job.to_string()), "{message}");
        }
        Ok(()) => panic!("{what} succeeded with Redis down"),
    };
    unavailable(
        a.claim(job, &[segment(1)], "pod-a").await.map(|_| ()),
        "claim",
    );
    unavailable(a.renew(&lease).await.map(|_| ()), "renew");
    unavailable(a.complete(&lease).await.map(|_| ()), "complete");
    unavailable(a.release(&lease, true).await.map(|_| ()), "release");
    unavailable(a.mark_done(job, &segment(2)).await, "mark_done");
    unavailable(
        b.wait_for(job, &segment(0), Duration::from_secs(5))
            .await
            .map(|_| ()),
        "wait_for",
    );
    unavailable(a.forget(job).await, "forget");
    assert!(a.ping().await.is_err());
    let took = started.elapsed();
    println!("8 operations failed in {took:?} with Redis down");
    assert!(took < Duration::from_secs(8), "errors come fast: {took:?}");
    assert_eq!(metrics.redis_up.get(), 0);
    assert_eq!(metrics.claims.with_label_values(&["error"]).get(), 1);
    assert_eq!(
        metrics.lease_renewals.with_label_values(&["error"]).get(),
        1
    );

    // Same port, empty server: the pool reconnects on its own.
    server.start_again();
    let deadline = Instant::now() + Duration::from_secs(10);
    let outcome = loop {
        match a.claim(job, &[segment(0)], "pod-a").await {
            Ok(mut outcomes) => break outcomes.remove(0),
            Err(err) => {
                assert!(Instant::now() < deadline, "no recovery: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let lease = lease_of(&outcome);
    assert_eq!(metrics.redis_up.get(), 1);

    // The pub/sub connection comes back too, and waiters wake on notices.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b_metrics.pubsub_reconnects.get() == 0 || !b.notices_connected() {
        assert!(Instant::now() < deadline, "pub/sub did not reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waiter = spawn_wait(&b, job, segment(0), Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    let completed_at = Instant::now();
    assert_eq!(a.complete(&lease).await.unwrap(), Completion::Completed);
    let (outcome, woke_at) = waiter.await.unwrap();
    assert_eq!(outcome.unwrap(), WaitOutcome::Done);
    let latency = woke_at - completed_at;
    println!("after the restart, a waiter woke {latency:?} after the completion");
    assert!(latency < Duration::from_millis(50), "{latency:?}");
    assert_eq!(b_metrics.pubsub_reconnects.get(), 1);
}

#[tokio::test]
async fn waiter_rechecks_when_notices_may_have_been_lost() {
    let server = RedisServer::start();
    let (b, b_metrics) = pod(&server, Duration::from_secs(30));
    let b = Arc::new(b);
    notices_ready(&b).await;
    let job = JobId::new_v4();
    let key = claim_key(job, &segment(0));
    let holder = format!("{} pod-a", segswarm::coordination::new_token());

    // A claim with a long TTL, so only a notice or a re-check can end the
    // wait early.
    let _: String = server.command(&["SET", &key, &holder, "PX", "30000"]);
    let waiter = spawn_wait(&b, job, segment(0), Duration::from_secs(20));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The pub/sub connection drops, and the holder's claim goes away without
    // a notice (as if its release was published during the gap).
    let started = Instant::now();
    let killed: i64 = server.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed, 1);
    let _: i64 = server.command(&["DEL", &key]);
    let (outcome, woke_at) = waiter.await.unwrap();
    assert_eq!(outcome.unwrap(), WaitOutcome::Free);
    let waited = woke_at - started;
    println!("waiter found the unit free {waited:?} after losing pub/sub");
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while b_metrics.pubsub_reconnects.get() == 0 || !b.notices_connected() {
        assert!(Instant::now() < deadline, "pub/sub did not reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b_metrics.pubsub_reconnects.get(), 1);
}

/// Set for the child process of [`rediss_url_with_password`].
const TLS_CHILD_URL: &str = "SEGSWARM_TEST_REDISS_URL";

/// `rediss://` with the password in the URL. The client trusts the test CA
/// through `SSL_CERT_FILE`, which is read from the environment: it is set
/// for a child run of this test binary rather than in this multi-threaded
/// process.
#[test]
fn rediss_url_with_password() {
    let dir = common::TestDir::new("rediss");
    let server = RedisServer::start_tls(dir.path(), "s3cret");
    let ca = server.ca_file().expect("a TLS server has a CA");
    let exe = std::env::current_exe().expect("test binary path");
    let output = std::process::Command::new(exe)
        .args(["--exact", "rediss_client", "--ignored", "--nocapture"])
        .env(TLS_CHILD_URL, server.url())
        .env("SSL_CERT_FILE", ca)
        .output()
        .expect("run the TLS client test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "TLS client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
}

#[tokio::test]
#[ignore = "run by rediss_url_with_password in a child process"]
async fn rediss_client() {
    let url = std::env::var(TLS_CHILD_URL).expect("run by rediss_url_with_password");
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let coord = Arc::new(
        RedisCoordinator::new(
            &RedisSettings::new(url.clone()),
            ClaimTtl::default(),
            metrics,
        )
        .expect("coordinator"),
    );
    coord.ping().await.expect("ping over TLS");
    notices_ready(&coord).await;
    let job = JobId::new_v4();
    let lease = lease_of(&claim_one(&coord, job, &segment(0), "pod-a").await);
    let waiter = spawn_wait(&coord, job, segment(0), Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(coord.complete(&lease).await.unwrap(), Completion::Completed);
    assert_eq!(waiter.await.unwrap().0.unwrap(), WaitOutcome::Done);

    // A wrong password is an error, not a panic, and hides the password.
    let wrong = url.replace(":s3cret@", ":wrong@");
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let bad = RedisCoordinator::new(&RedisSettings::new(wrong), ClaimTtl::default(), metrics)
        .expect("coordinator");
    match bad.claim(job, &[segment(1)], "pod-a").await {
        Err(CoordError::Unavailable(message)) => {
            println!("wrong password: {message}");
            assert!(!message.contains("wrong"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn heartbeats_add_up_the_live_pods_and_forget_the_silent() {
    let server = RedisServer::start();
    let (a, _) = pod(&server, Duration::from_secs(5));
    let (b, _) = pod(&server, Duration::from_secs(5));
    let short = Duration::from_millis(300);
    let long = Duration::from_secs(10);
    assert_eq!(
        a.heartbeat("pod-a", 2, 1, long).await.expect("beat"),
        Some(ClusterCapacity {
            pods: 1,
            slots: 2,
            busy: 1
        })
    );
    assert_eq!(
        b.heartbeat("pod-b", 3, 0, short).await.expect("beat"),
        Some(ClusterCapacity {
            pods: 2,
            slots: 5,
            busy: 1
        })
    );
    // A second beat replaces the pod's entry, never adds to it.
    let again = a.heartbeat("pod-a", 2, 2, long).await.expect("beat");
    assert_eq!(again.map(|c| (c.pods, c.slots, c.busy)), Some((2, 5, 2)));
    // pod-b stops beating: after its TTL it no longer counts.
    tokio::time::sleep(short + Duration::from_millis(100)).await;
    let after = a.heartbeat("pod-a", 2, 0, long).await.expect("beat");
    assert_eq!(after.map(|c| (c.pods, c.slots)), Some((1, 2)));
    let fields: Vec<String> = server.command(&["HKEYS", "segswarm:pods"]);
    assert_eq!(
        fields,
        vec!["pod-a".to_string()],
        "the silent pod's entry is gone"
    );
}
