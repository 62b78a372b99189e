#!/usr/bin/env python3
"""The compose cluster's checks, run by scripts/compose-test once the images
exist (read that script first: it sets the environment this expects).

Against `docker-compose.yml` as shipped, with the images and settings of
$COMPOSE_ENV_FILE:
  up -d (3 replicas, deploy.replicas) -> every container healthy
  job A through nginx: done, its HLS decodes (ffmpeg) and plays in Chromium
    (tests/browser/play.mjs); every replica is distributed and won units
    (/metrics of each container), logged them (one JSON line per unit), runs
    as uid 10001 and wrote the volume as 10001
  job B: docker kill of a replica holding a claim -> its claims are taken over
    after the claim TTL, the job is done, its HLS decodes
  job C: docker-compose restart redis mid-job -> done, decodes
  job D: docker-compose stop mid-job -> every replica exits 0 within the grace
    period; no in-progress file is left in any job's .tmp/ (job B's killed
    replica's files were swept after B ended)
  down -v -> no container, volume or network of the project is left.
Prints FIGURE: lines and exits non-zero at the first failed check.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[2]
DOCKER = os.environ.get("DOCKER", "docker")
WORK = pathlib.Path(os.environ["COMPOSE_TEST_DIR"])
ENV = dict(os.environ)
for line in pathlib.Path(os.environ["COMPOSE_ENV_FILE"]).read_text().splitlines():
    if "=" in line and not line.startswith("#"):
        key, value = line.split("=", 1)
        ENV[key] = value
PROJECT = ENV["COMPOSE_PROJECT_NAME"]
BASE = f"http://127.0.0.1:{ENV['SEGSWARM_PORT']}"
GRACE_SECONDS = 25  # SEGSWARM_SHUTDOWN_GRACE in docker-compose.yml
JOB_LIMIT = 240
REPLICAS = 3


class CheckFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)
    print(f"compose-test: ok: {message}", flush=True)


def figure(text):
    print(f"FIGURE: {text}", flush=True)


def run(args, check_status=True, timeout=300):
    result = subprocess.run(
        [str(a) for a in args], env=ENV, capture_output=True, text=True, timeout=timeout
    )
    if check_status and result.returncode != 0:
        raise CheckFailed(f"{' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}")
    return result


def compose(*args, check_status=True, timeout=300):
    return run(
        ["docker-compose", "-p", PROJECT, "-f", REPO / "docker-compose.yml", *args],
        check_status,
        timeout,
    )


def docker(*args, check_status=True):
    return run([DOCKER, *args], check_status).stdout.strip()


def http(method, path, body=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(BASE + path, data=data, method=method)
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        return 0, str(err).encode()


def get_json(path):
    status, body = http("GET", path)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def wait(condition, limit, what, interval=0.25):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise CheckFailed(f"timed out after {limit} s waiting for {what}")


def transcoders(all_states=False):
    args = ["ps", "-q"] + (["-a"] if all_states else []) + ["--filter",
            f"label=com.docker.compose.project={PROJECT}", "--filter",
            "label=com.docker.compose.service=transcoder"]
    return docker(*args).split()


def inspect(container, template):
    return docker("inspect", "-f", template, container)


def health(container):
    return inspect(container, "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}")


def hostname(container):
    return inspect(container, "{{.Config.Hostname}}")


def pod_get(container, path):
    """GET `path` from one replica itself (the image has bash, not curl)."""
    script = (
        "exec 3<>/dev/tcp/127.0.0.1/8080 && "
        f"printf 'GET {path} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && cat <&3"
    )
    return docker("exec", container, "bash", "-c", script)


def metric(text, name, labels):
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def make_clip(name, seconds):
    media = pathlib.Path(ENV["SEGSWARM_MEDIA_DIR"])
    media.mkdir(parents=True, exist_ok=True)
    media.chmod(0o755)
    path = media / name
    if not path.exists():
        run(["ffmpeg", "-nostdin", "-v", "error", "-y",
             "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=30:duration={seconds}",
             "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
             "-c:v", "libx264", "-preset", "ultrafast", "-g", "30", "-pix_fmt", "yuv420p",
             "-c:a", "aac", "-shortest", path])
    path.chmod(0o644)
    return f"/media/{name}"


def submit(source, **settings):
    status, body = http("POST", "/v1/jobs", {"source": source, **settings})
    check(status == 201, f"POST /v1/jobs through nginx accepted {source} (status {status}: {body[:200]!r})")
    return json.loads(body)["id"]


def job(job_id):
    status, view = get_json(f"/v1/jobs/{job_id}")
    return view if status == 200 else None


def wait_done(job_id, what):
    def ended():
        view = job(job_id)
        return view if view and view["status"] in ("done", "partial", "failed", "canceled") else None
    view = wait(ended, JOB_LIMIT, f"job {job_id} ({what}) to end")
    check(view["status"] == "done", f"job {what} is done (status {view['status']}, error {view.get('error')})")
    return view


def units_of(view):
    return sum(r["total"] for r in view["renditions"]) + view["audio_tracks"] + 1


def decodes(job_id, what):
    url = f"{BASE}/hls/{job_id}/master.m3u8"
    result = run(["ffmpeg", "-nostdin", "-v", "error", "-i", url, "-map", "0", "-f", "null", "-"],
                 check_status=False, timeout=120)
    check(result.returncode == 0 and not result.stderr.strip(),
          f"the HLS of job {what} decodes through nginx without errors ({result.stderr.strip()[:300]})")
    probe = json.loads(run(["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", url]).stdout)
    kinds = sorted({s["codec_type"] for s in probe["streams"]})
    check(kinds == ["audio", "video"], f"job {what} has video and audio streams ({kinds})")


def download(job_id, into):
    """The job's HLS tree through nginx, following the playlists."""
    into.mkdir(parents=True, exist_ok=True)

    def fetch(relative):
        status, body = http("GET", f"/hls/{job_id}/{relative}", timeout=60)
        if status != 200:
            raise CheckFailed(f"GET /hls/{job_id}/{relative}: {status}")
        target = into / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
        return body.decode(errors="replace")

    master = fetch("master.m3u8")
    playlists = [l for l in master.splitlines() if l and not l.startswith("#")]
    playlists += re.findall(r'URI="([^"]+)"', master)
    for playlist in playlists:
        folder = playlist.rsplit("/", 1)[0]
        for segment in [l for l in fetch(playlist).splitlines() if l and not l.startswith("#")]:
            fetch(f"{folder}/{segment}")


def holders():
    status, view = get_json("/v1/cluster")
    return view["holders"] if status == 200 and view else []


def tmp_files():
    """In-progress files left in any job's .tmp/ on the shared volume."""
    volume = f"{PROJECT}_segswarm-data"
    out = docker("run", "--rm", "--label", f"com.docker.compose.project={PROJECT}", "-v", f"{volume}:/data",
                 "--entrypoint", "find", "segswarm-ci/segswarm:test", "/data/jobs",
                 "-mindepth", "3", "-path", "*/.tmp/*")
    return [line for line in out.splitlines() if line.strip()]


def main():
    clips = {name: make_clip(f"{name}.mp4", seconds)
             for name, seconds in (("a", 12), ("b", 30), ("c", 30), ("d", 30))}

    # --------------------------------------------------------------- up ----
    started = time.monotonic()
    compose("up", "-d", "--no-build", timeout=180)
    replicas = transcoders()
    check(len(replicas) == REPLICAS,
          f"docker-compose up -d started {len(replicas)} transcoder replicas (deploy.replicas: {REPLICAS}, no --scale)")
    services = replicas + docker("ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}",
                                 "--filter", "label=com.docker.compose.service=redis").split()
    wait(lambda: all(health(c) == "healthy" for c in services), 120,
         "the transcoders' and redis's healthchecks")
    figure(f"time to healthy (docker-compose up -d to every healthcheck healthy, {REPLICAS} replicas + redis): "
           f"{time.monotonic() - started:.1f} s")
    wait(lambda: http("GET", "/readyz")[0] == 200, 30, "nginx to answer /readyz")
    check(True, "every container's healthcheck is healthy and nginx answers on the host port")

    # ------------------------------------------- job A: the happy path ----
    started = time.monotonic()
    job_a = submit(clips["a"])
    view = wait_done(job_a, "A")
    figure(f"job time (12 s 640x360 clip, ladder 240p,360p, ultrafast, {REPLICAS} replicas on "
           f"{os.cpu_count()} cores, submit to done through nginx): {time.monotonic() - started:.1f} s")
    units = units_of(view)
    decodes(job_a, "A")
    hls_dir = WORK / f"hls-{job_a}"
    download(job_a, hls_dir)
    played = run(["node", REPO / "tests/browser/play.mjs", hls_dir, "60"], check_status=False, timeout=120)
    check(played.returncode == 0, f"job A plays to the end in Chromium (hls.js): {played.stdout.strip()[:300]}")

    won_total = 0
    for container in replicas:
        text = pod_get(container, "/metrics")
        won = metric(text, "segswarm_claims_total", {"result": "won"}) or 0
        mode = metric(text, "segswarm_mode", {"mode": "distributed"})
        check(mode == 1, f"replica {hostname(container)} is in distributed mode")
        check(won > 0, f"replica {hostname(container)} won {won:.0f} of job A's {units} units")
        won_total += won
        logs = run([DOCKER, "logs", container]).stderr
        done_lines = [json.loads(l) for l in logs.splitlines()
                      if l.startswith("{") and '"unit done"' in l]
        check(done_lines and all(d.get("job") and d.get("unit") and "seconds" in d for d in done_lines),
              f"replica {hostname(container)} logged {len(done_lines)} 'unit done' JSON lines with job, unit, seconds")
        check(docker("exec", container, "id", "-u") == "10001", f"replica {hostname(container)} runs as uid 10001")
    check(won_total >= units, f"the replicas won {won_total:.0f} claims for {units} units together")
    owner = docker("exec", replicas[0], "stat", "-c", "%u", f"/data/jobs/{job_a}/master.m3u8")
    check(owner == "10001", "the volume's files are written by uid 10001")

    # ------------------------------------------ job B: docker kill ----
    # 6 s segments: each video unit runs long enough for the test to see it
    # held with its file (2 s units can end between two looks).
    job_b = submit(clips["b"], segment_duration=6)
    by_host = {hostname(c): c for c in replicas}
    redis = docker("ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}",
                   "--filter", "label=com.docker.compose.service=redis").split()[0]
    tmp_b = f"/data/jobs/{job_b}/.tmp"

    def victim_with_a_file():
        """A replica holding a video unit of B whose in-progress file exists
        (the claim's value in Redis is `<token> <worker_id>`). Three calls per
        look (the cluster view, one listing of the shared .tmp/, one MGET), so
        a look stays shorter than a unit's encode on a loaded machine."""
        held = [h for h in holders() if h["job"] == job_b and h["worker_id"] in by_host
                and h["unit"].startswith("video/")]
        if not held:
            return None
        names = docker("exec", replicas[0], "ls", tmp_b, check_status=False).split()
        keys = [f"segswarm:{{{job_b}}}:claim:{h['unit']}" for h in held]
        values = docker("exec", redis, "redis-cli", "MGET", *keys, check_status=False).splitlines()
        for holder, value in zip(held, values):
            token = value.split(" ")[0] if " " in value else ""
            if token and any(name.startswith(token) for name in names):
                return holder["worker_id"], token
        return None
    victim, token = wait(victim_with_a_file, 120, "a replica to hold a unit of job B with its file in .tmp/")
    docker("kill", by_host[victim])
    killed = time.monotonic()
    survivors = [c for c in replicas if c != by_host[victim]]

    def stranded():
        names = docker("exec", survivors[0], "ls", tmp_b, check_status=False).split()
        return [name for name in names if name.startswith(token)]
    left = stranded()
    print(f"compose-test: the killed replica left {left} in job B's .tmp/", flush=True)
    wait(lambda: not any(h["worker_id"] == victim for h in holders()), 120,
         f"the killed replica's claims to be taken over")
    taken_over = time.monotonic() - killed
    figure(f"takeover after docker kill (until no claim of the killed replica is held; claim TTL "
           f"{int(ENV['SEGSWARM_CLAIM_TTL_MS']) / 1000:.0f} s): {taken_over:.1f} s")
    wait_done(job_b, "B (a replica killed mid-job)")
    figure(f"job B done after docker kill: {time.monotonic() - killed:.1f} s after the kill")
    decodes(job_b, "B")
    state = inspect(by_host[victim], "{{.State.Status}} (restarts: {{.RestartCount}})")
    print(f"compose-test: the killed replica is {state} (restart: unless-stopped)", flush=True)
    wait(lambda: not stranded(), 60, "the killed replica's in-progress files to be swept")
    check(True, f"the killed replica's in-progress files of job B were swept "
          f"{time.monotonic() - killed:.1f} s after the kill (SEGSWARM_STALL_TIMEOUT "
          f"{ENV['SEGSWARM_STALL_TIMEOUT']} s)")
    swept_by = [hostname(c) for c in survivors
                if "removed stale in-progress files of an ended job" in run([DOCKER, "logs", c]).stderr]
    # (Nothing was left when the killed encode had just been published.)
    check(swept_by or not left, f"the sweep of {len(left)} stranded entries was logged by {swept_by}")
    compose("start", "transcoder")
    wait(lambda: len(transcoders()) == REPLICAS and all(health(c) == "healthy" for c in transcoders()),
         120, "the killed replica to be back and healthy")
    check(True, f"docker-compose start brought the killed replica back ({REPLICAS} healthy)")

    # ------------------------------------ job C: restart redis mid-job ----
    job_c = submit(clips["c"])
    wait(lambda: (job(job_c) or {}).get("progress", 0) > 0, 120, "job C to make progress")
    started = time.monotonic()
    compose("restart", "redis")
    figure(f"docker-compose restart redis: {time.monotonic() - started:.1f} s")
    wait_done(job_c, "C (redis restarted mid-job)")
    decodes(job_c, "C")

    # ------------------------------------------- job D: stop mid-job ----
    job_d = submit(clips["d"])
    wait(lambda: any(h["job"] == job_d for h in holders()), 120, "job D to be encoded")
    running = transcoders()
    started = time.monotonic()
    compose("stop", timeout=120)
    stop_seconds = time.monotonic() - started
    figure(f"docker-compose stop mid-job ({len(running)} replicas, redis, nginx): {stop_seconds:.1f} s")
    for container in running:
        code = inspect(container, "{{.State.ExitCode}}")
        check(code == "0", f"replica {hostname(container)} exited 0 on stop (exit code {code})")
    check(stop_seconds < GRACE_SECONDS + 5,
          f"every replica stopped within the grace period ({stop_seconds:.1f} s < {GRACE_SECONDS} s + margin)")
    left = tmp_files()
    check(not left, f"no in-progress file left in any job's .tmp/ ({left[:5]})")

    # ------------------------------------------------------------ down ----
    compose("down", "-v", "--remove-orphans", timeout=120)
    label = f"label=com.docker.compose.project={PROJECT}"
    leftovers = (docker("ps", "-aq", "--filter", label).split()
                 + docker("volume", "ls", "-q", "--filter", label).split()
                 + docker("network", "ls", "-q", "--filter", label).split())
    check(not leftovers, f"docker-compose down -v left no container, volume or network ({leftovers})")


if __name__ == "__main__":
    try:
        main()
    except (CheckFailed, subprocess.TimeoutExpired) as err:
        print(f"compose-test: FAIL: {err}", file=sys.stderr, flush=True)
        logs = compose("logs", "--no-color", "--tail", "40", check_status=False)
        print(logs.stdout[-12000:], file=sys.stderr)
        compose("down", "-v", "--remove-orphans", "-t", "5", check_status=False)
        sys.exit(1)
    print("compose-test: all checks passed", flush=True)
